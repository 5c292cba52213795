"""The gateway's key-expression scheme: which TensorGuard topic travels under which Zenoh key (ROS-free).

Every key starts with ``tensorguard/<fleet>/``. What the fleet server publishes to every site sits
under the reserved site name ``fleet``; what a site sends names the site and the robot:

    tensorguard/<fleet>/fleet/round_config                   RoundConfig      server -> sites, latched
    tensorguard/<fleet>/fleet/model_updates                  ModelUpdate      server -> sites, latched
    tensorguard/<fleet>/fleet/fleet_status                   FleetStatus      server -> sites
    tensorguard/<fleet>/<site>/<robot>/encrypted_updates     EncryptedUpdate  site -> server
    tensorguard/<fleet>/<site>/<robot>/outcome_reports       OutcomeReport    site -> server
    tensorguard/<fleet>/<site>/<robot>/status                RobotStatus      site -> server
    tensorguard/<fleet>/<site>/delivered                     SHA-256 digests  server -> site (acknowledgements)
    tensorguard/<fleet>/<site>/site_sum                      SitePartialSum   site -> server (site aggregation only)

The site-sum key is the site's, not a robot's: with site aggregation (docs/site-aggregation.md) a site
sends one signed partial sum per round instead of its robots' encrypted updates; the router grants it
only to the sites its network file lists under ``site_aggregation``.

Fleet, site and robot names follow the project's id grammar (`identity.check_id`: no ``/``, ``*``
or ``.``), so a name can never widen a key into a wildcard, and the router's access control can
grant a site exactly its robots' keys (`site_publications`, `site_subscriptions`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from tensorguard_crypto.gateway_certs import RESERVED_SITE_ID
from tensorguard_crypto.identity import InvalidId, check_id

ROOT = 'tensorguard'
FLEET_SCOPE = RESERVED_SITE_ID  # the reserved site name of what the fleet server publishes


class Direction(enum.Enum):
    """Which way a channel crosses the Zenoh network."""

    TO_SITES = 'to_sites'
    TO_SERVER = 'to_server'


@dataclass(frozen=True)
class Channel:
    """One TensorGuard topic the gateway carries: its key suffix and direction; `latched` channels are
    answered from the server gateway's queryable, `per_robot` ones live in the robot's namespace."""

    name: str
    direction: Direction
    latched: bool = False
    per_robot: bool = False


ROUND_CONFIG = Channel('round_config', Direction.TO_SITES, latched=True)
MODEL_UPDATES = Channel('model_updates', Direction.TO_SITES, latched=True)
FLEET_STATUS = Channel('fleet_status', Direction.TO_SITES)
ENCRYPTED_UPDATES = Channel('encrypted_updates', Direction.TO_SERVER)
OUTCOME_REPORTS = Channel('outcome_reports', Direction.TO_SERVER)
ROBOT_STATUS = Channel('status', Direction.TO_SERVER, per_robot=True)
SITE_SUMS = Channel('site_sum', Direction.TO_SERVER)  # one key per site, not in CHANNELS: site aggregation only
CHANNELS = (ROUND_CONFIG, MODEL_UPDATES, FLEET_STATUS, ENCRYPTED_UPDATES, OUTCOME_REPORTS, ROBOT_STATUS)
BY_NAME = {channel.name: channel for channel in CHANNELS}
DELIVERED = 'delivered'  # tensorguard/<fleet>/<site>/delivered: the server gateway's acknowledgements


class KeySchemeError(ValueError):
    """A key expression or a name does not fit the scheme (the message names what is wrong)."""


@dataclass(frozen=True)
class Route:
    """Where a key says a message belongs: the channel and, for site channels, the site and robot."""

    channel: Channel
    site: str = ''
    robot: str = ''


def check_name(value: str, what: str) -> str:
    """`value` if it is a valid fleet, site or robot name (the id grammar), else `KeySchemeError` naming `what`."""
    try:
        return check_id(value, what)
    except InvalidId as error:
        raise KeySchemeError(str(error)) from None


def check_site(site: str) -> str:
    """A site name: the id grammar, and not the reserved ``fleet``."""
    check_name(site, 'site id')
    if site == FLEET_SCOPE:
        raise KeySchemeError(f'site id {FLEET_SCOPE!r} is reserved for what the fleet server publishes')
    return site


@dataclass(frozen=True)
class KeySpace:
    """The keys of one fleet."""

    fleet: str

    def __post_init__(self) -> None:
        check_name(self.fleet, 'fleet name')

    @property
    def prefix(self) -> str:
        """``tensorguard/<fleet>``."""
        return f'{ROOT}/{self.fleet}'

    def fleet_key(self, channel: Channel) -> str:
        """The key of a server-to-sites channel."""
        if channel.direction is not Direction.TO_SITES:
            raise KeySchemeError(f'{channel.name} is sent by sites; it has a per-robot key')
        return f'{self.prefix}/{FLEET_SCOPE}/{channel.name}'

    def robot_key(self, site: str, robot: str, channel: Channel) -> str:
        """The key of a site-to-server channel for one robot of one site."""
        if channel.direction is not Direction.TO_SERVER:
            raise KeySchemeError(f'{channel.name} is sent by the fleet server; it has a fleet key')
        return f'{self.prefix}/{check_site(site)}/{check_name(robot, "robot id")}/{channel.name}'

    def delivered_key(self, site: str) -> str:
        """Where the server gateway acknowledges a site's records (the SHA-256 of each one it delivered)."""
        return f'{self.prefix}/{check_site(site)}/{DELIVERED}'

    def site_sum_key(self, site: str) -> str:
        """Where a site's gateway puts its site's partial sums (site aggregation)."""
        return f'{self.prefix}/{check_site(site)}/{SITE_SUMS.name}'

    def all_site_sums_key(self) -> str:
        """The wildcard the server gateway subscribes to for the sites' partial sums."""
        return f'{self.prefix}/*/{SITE_SUMS.name}'

    def all_sites_key(self, channel: Channel) -> str:
        """The wildcard the server gateway subscribes to for a site-to-server channel."""
        return f'{self.prefix}/*/*/{channel.name}'

    def parse(self, key: str) -> Route:
        """The route of a concrete key of this fleet; `KeySchemeError` for anything else."""
        parts = key.split('/')
        if parts[:2] != [ROOT, self.fleet]:
            raise KeySchemeError(f'{key!r} is not a key of fleet {self.fleet!r}')
        if len(parts) == 4 and parts[2] == FLEET_SCOPE and parts[3] in BY_NAME \
                and BY_NAME[parts[3]].direction is Direction.TO_SITES:
            return Route(BY_NAME[parts[3]])
        if len(parts) == 4 and parts[3] == SITE_SUMS.name:
            return Route(SITE_SUMS, check_site(parts[2]))
        if len(parts) == 5 and parts[4] in BY_NAME and BY_NAME[parts[4]].direction is Direction.TO_SERVER:
            return Route(BY_NAME[parts[4]], check_site(parts[2]), check_name(parts[3], 'robot id'))
        raise KeySchemeError(f'{key!r} names no TensorGuard channel of the scheme')

    def site_publications(self, site: str, robots: list[str], aggregating: bool = False) -> list[str]:
        """Every key a site may publish: its own robots' site-to-server channels and, if it is `aggregating`,
        its own site-sum key; nothing else."""
        return [*(self.robot_key(site, robot, channel) for robot in robots
                  for channel in CHANNELS if channel.direction is Direction.TO_SERVER),
                *([self.site_sum_key(site)] if aggregating else [])]

    def site_subscriptions(self, site: str) -> list[str]:
        """Every key a site may subscribe to or query: the fleet's config, model and status, its own status and
        the acknowledgements of its records."""
        return [*(self.fleet_key(channel) for channel in CHANNELS if channel.direction is Direction.TO_SITES),
                f'{self.prefix}/{check_site(site)}/*/{ROBOT_STATUS.name}', self.delivered_key(site)]
