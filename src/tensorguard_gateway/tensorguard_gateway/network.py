"""Zenoh configurations of the fleet router and the gateways: TLS, where to listen, access control (ROS-free).

The router is the only listener: it accepts TLS links only (mutual TLS: a peer must present a
certificate of the fleet's gateway CA), on exactly the configured endpoints, with scouting off so it
announces itself nowhere. Its access control denies everything not granted; the grants come from the
key scheme (keyexpr.py): a site (certificate common name ``site:<id>``) may publish only its own
robots' update, outcome-report and status keys and subscribe to (and query) only the fleet's round
config, model and fleet status and its own robots' status; a site listed under ``site_aggregation`` may
also publish its own site-sum key (docs/site-aggregation.md), no other site's; it learns of the fleet server's
subscriptions to its own keys (so its publishers match) and of its queryables, nothing else; the fleet server's
gateway (common name
``fleet-server``) may do everything under ``tensorguard/<fleet>/``. Anything else a link tries is
dropped by the router and logged at trace level on the ``zenoh::net::routing::interceptor::access_control``
target as ``... is unauthorized to Put (ingress) on <key>`` (`ACL_LOG_FILTER`).

`RouterConfig` is what ``config/gateway_network.yaml`` holds; file paths in it are relative to that file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensorguard_crypto.gateway_certs import SERVER_NAME, site_common_name

from .keyexpr import CHANNELS, Direction, KeySchemeError, KeySpace, check_name, check_site

# RUST_LOG filter that makes the router log every access-control decision (denials included).
ACL_LOG_FILTER = 'warn,zenoh::net::routing::interceptor::access_control=trace'
DENIAL_MARK = 'is unauthorized to'
TO_SERVER = [channel for channel in CHANNELS if channel.direction is Direction.TO_SERVER]
# A blocking put (large messages: congestion control BLOCK) closes the link if the whole message has not
# gone into the link within this long of its first wait; Zenoh's default, 5 s, is shorter than 8 MiB takes
# at 10 Mbit/s. 120 s carries the 64 MiB cap at 5 Mbit/s.
WAIT_BEFORE_CLOSE_S = 120
# A link on which nothing arrived for the peer's lease is closed, but closing it waits for a put blocked on
# it (the put holds the link's queue) until that put's wait ends. With Zenoh's 10 s lease, a cut during a
# large put left the site's session closing, neither sending nor reconnecting, for up to
# WAIT_BEFORE_CLOSE_S (docs/gateway.md). A lease as long as that wait lets TCP carry the link through a
# cut shorter than it (nothing is reconnected or resent); after a longer cut the link closes when the lease
# expires or, with a put blocked on it, when that put's wait ends, and the session reconnects.
LEASE_S = WAIT_BEFORE_CLOSE_S
# Keep-alives still every 2.5 s, as with Zenoh's default lease (10 s, 4 per lease): at 4 per 120 s lease
# (every 30 s), most 1 MiB messages over the 10 Mbit/s test link took 31 s instead of 1.8 s (bench_gateway;
# docs/gateway.md).
KEEP_ALIVE_S = 2.5
TX = {'lease': LEASE_S * 1000, 'keep_alive': round(LEASE_S / KEEP_ALIVE_S),
      'queue': {'congestion_control': {'block': {'wait_before_close': WAIT_BEFORE_CLOSE_S * 1_000_000}}}}
_SERVER_MESSAGES = ['put', 'delete', 'declare_subscriber', 'query', 'declare_queryable', 'reply']


class NetworkConfigError(ValueError):
    """The router or gateway network configuration is unusable; the message names the field."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS end: the fleet's gateway CA certificate, this end's certificate and private key."""

    root_ca_certificate: str
    certificate: str
    private_key: str

    def check(self) -> None:
        """Refuse missing files (Zenoh would fail later with a less helpful message)."""
        for name in ('root_ca_certificate', 'certificate', 'private_key'):
            path = getattr(self, name)
            if not path or not Path(path).is_file():
                raise NetworkConfigError(f'tls.{name}: {path!r} is not a file (issue one with '
                                         '`tensorguard fleet gateway-cert`)')


def _tls_endpoints(endpoints: list[str], what: str) -> list[str]:
    if not endpoints:
        raise NetworkConfigError(f'{what}: no endpoint given')
    for endpoint in endpoints:
        if not isinstance(endpoint, str) or not endpoint.startswith('tls/'):
            raise NetworkConfigError(f'{what}: {endpoint!r} is not a tls/<host>:<port> endpoint; '
                                     'the fleet network carries nothing without mutual TLS')
    return list(endpoints)


def _json5(settings: dict[str, Any]) -> Any:
    import zenoh

    config = zenoh.Config()
    for key, value in settings.items():
        config.insert_json5(key, json.dumps(value))
    return config


@dataclass(frozen=True)
class RouterConfig:
    """The fleet router: fleet name, listen endpoints, TLS files, each site's robots and the sites that send one
    partial sum per round (site aggregation)."""

    fleet: str
    listen: list[str]
    tls: TlsFiles
    sites: dict[str, list[str]] = field(default_factory=dict)
    site_aggregation: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            check_name(self.fleet, 'fleet')
            for site, robots in self.sites.items():
                check_site(site)
                if not robots:
                    raise NetworkConfigError(f'sites.{site}: lists no robot')
                for robot in robots:
                    check_name(robot, f'sites.{site} robot id')
            for site in self.site_aggregation:
                if site not in self.sites:
                    raise NetworkConfigError(f'site_aggregation: {site!r} is not one of the sites')
        except KeySchemeError as error:
            raise NetworkConfigError(str(error)) from None
        _tls_endpoints(self.listen, 'listen')

    def access_control(self) -> dict[str, Any]:
        """The router's Zenoh ``access_control`` section (module docstring)."""
        keys = KeySpace(self.fleet)
        rules: list[dict[str, Any]] = [{'id': 'fleet_server', 'messages': _SERVER_MESSAGES,
                                        'flows': ['ingress', 'egress'], 'permission': 'allow',
                                        'key_exprs': [f'{keys.prefix}/**']}]
        subjects = [{'id': 'fleet_server', 'cert_common_names': [SERVER_NAME]}]
        policies = [{'id': 'fleet_server', 'rules': ['fleet_server'], 'subjects': ['fleet_server']}]
        for site, robots in sorted(self.sites.items()):
            subscriptions = keys.site_subscriptions(site)
            aggregating = site in self.site_aggregation
            publications = keys.site_publications(site, robots, aggregating)
            rules += [
                {'id': f'{site}_publish', 'messages': ['put'], 'flows': ['ingress'], 'permission': 'allow',
                 'key_exprs': publications},
                {'id': f'{site}_subscribe', 'messages': ['declare_subscriber', 'query'], 'flows': ['ingress'],
                 'permission': 'allow', 'key_exprs': subscriptions},
                {'id': f'{site}_receive', 'messages': ['put', 'reply', 'declare_queryable'], 'flows': ['egress'],
                 'permission': 'allow', 'key_exprs': subscriptions},
                {'id': f'{site}_match', 'messages': ['declare_subscriber'], 'flows': ['egress'], 'permission': 'allow',
                 'key_exprs': [*publications, *map(keys.all_sites_key, TO_SERVER),
                               *([keys.all_site_sums_key()] if aggregating else [])]},
            ]
            subjects.append({'id': site, 'cert_common_names': [site_common_name(site)]})
            policies.append({'id': site, 'subjects': [site], 'rules': [
                f'{site}_{rule}' for rule in ('publish', 'subscribe', 'receive', 'match')]})
        return {'enabled': True, 'default_permission': 'deny', 'rules': rules, 'subjects': subjects,
                'policies': policies}

    def zenoh_settings(self) -> dict[str, Any]:
        """The router session's settings, top-level key -> value."""
        self.tls.check()
        return {
            'mode': 'router',
            'listen': {'endpoints': self.listen},
            'scouting': {'multicast': {'enabled': False}, 'gossip': {'enabled': False}},
            'transport': {'shared_memory': {'enabled': False}, 'link': {'tx': TX, 'tls': {
                'root_ca_certificate': self.tls.root_ca_certificate, 'enable_mtls': True,
                'listen_certificate': self.tls.certificate, 'listen_private_key': self.tls.private_key,
                'close_link_on_expiration': True}}},
            'access_control': self.access_control(),
        }

    def zenoh_config(self) -> Any:
        """The router session's `zenoh.Config`."""
        return _json5(self.zenoh_settings())


def load_router_config(path: Path) -> RouterConfig:
    """Read ``gateway_network.yaml`` (relative TLS paths are relative to the file)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise NetworkConfigError(f'{path}: cannot read the network configuration ({error})') from None
    if not isinstance(data, dict) or not {'fleet', 'listen', 'tls', 'sites'} <= set(data) <= {
            'fleet', 'listen', 'tls', 'sites', 'site_aggregation'}:
        raise NetworkConfigError(f'{path}: needs exactly the keys fleet, listen, tls, sites (and optionally '
                                 'site_aggregation)')
    tls = data['tls']
    if not isinstance(tls, dict) or set(tls) != {'root_ca_certificate', 'certificate', 'private_key'}:
        raise NetworkConfigError(f'{path}: tls needs exactly root_ca_certificate, certificate, private_key')
    sites = data['sites'] or {}
    if not isinstance(sites, dict) or not all(isinstance(r, list) for r in sites.values()):
        raise NetworkConfigError(f'{path}: sites maps each site id to a list of robot ids')
    aggregating = data.get('site_aggregation') or []
    if not isinstance(aggregating, list):
        raise NetworkConfigError(f'{path}: site_aggregation is a list of site ids')
    files = TlsFiles(**{key: str(path.parent / value) for key, value in tls.items()})
    return RouterConfig(str(data['fleet']), list(data['listen'] or []), files,
                        {str(site): [str(r) for r in robots] for site, robots in sites.items()},
                        [str(site) for site in aggregating])


def client_config(connect: list[str], tls: TlsFiles, verify_router_name: bool = True) -> Any:
    """A gateway's Zenoh session: a client of the fleet router over mutual TLS, listening nowhere, without
    Zenoh's shared-memory transport (which would hand payloads to a peer on the same host outside the TLS
    link). It keeps trying to reach the router after a link cut."""
    tls.check()
    return _json5({
        'mode': 'client',
        'connect': {'endpoints': _tls_endpoints(connect, 'connect'), 'timeout_ms': 0, 'exit_on_failure': False,
                    'retry': {'period_init_ms': 500, 'period_max_ms': 4000, 'period_increase_factor': 2}},
        'scouting': {'multicast': {'enabled': False}, 'gossip': {'enabled': False}},
        'transport': {'shared_memory': {'enabled': False}, 'link': {'tx': TX, 'tls': {
            'root_ca_certificate': tls.root_ca_certificate, 'enable_mtls': True,
            'connect_certificate': tls.certificate, 'connect_private_key': tls.private_key,
            'verify_name_on_connect': verify_router_name, 'close_link_on_expiration': True}}},
    })
