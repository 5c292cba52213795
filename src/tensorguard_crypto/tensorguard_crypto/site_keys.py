"""A site aggregator's keys (ROS-free): what `tensorguard fleet site-aggregator-key` makes on the fleet
server for one site's gateway, and how that gateway loads them (docs/site-aggregation.md).

Written to the operator's output directory (each mode 0600, never overwritten), for the site gateway only:

    <site>_aggregator.key   Ed25519 identity, key id ``<site>_aggregator``, role site_aggregator
                            (keystore format: encrypted under the fleet passphrase)
    <site>_seal.key         the X25519 secret the site's robots seal their bodies to
                            (keystore.seal_secret under the fleet passphrase, bound to the site)
    <site>_trust.json       the public keys the site gateway checks round configs and its robots'
                            updates with: the fleet's aggregator, server and key service, and the site's robots

and registered on the fleet server: the identity in the fleet's KMS (role site_aggregator), and the
site's entry ``{signer_key_id, seal_key, robots}`` in ``server/site_aggregators.json``, the file the
aggregator's ``site_aggregators_file`` parameter names. A site is added once: nothing in the file is
replaced, so a site whose robots change (or one robot's key is rotated, which its trust file pins) is
not updated by this module (docs/site-aggregation.md, "Not built").
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import keystore
from .fleet import AGGREGATOR_ID, SERVER_IDENTITIES, FleetPaths, ProvisioningError, require_provisioned
from .gateway_certs import RESERVED_SITE_ID
from .hybrid import SealedBoxKey
from .identity import Identity, Role, check_id, fingerprint
from .kms import KeyManagementSystem, KeyMetadata, KMSError
from .site_sum import site_aggregators_from_mapping
from .verify import PinnedKeys

SITES_FILE = 'site_aggregators.json'  # JSON is YAML: the aggregator reads it as its site_aggregators_file
SEAL_CONTEXT = b'tensorguard site seal key v1/'
MAX_TRUST_BYTES = 256 * 1024


class SiteAggregatorError(ProvisioningError):
    """A site aggregator's keys cannot be made or loaded as asked; the message names what is wrong."""

    reason = 'site_aggregator_error'


@dataclass(frozen=True)
class SiteAggregatorFiles:
    """What was made for one site: its files, the registered key id and the public parts' fingerprints."""

    site_id: str
    signer_key_id: str
    identity_file: Path
    seal_file: Path
    trust_file: Path
    sites_file: Path
    signer_fingerprint: str
    seal_fingerprint: str


def check_site_id(site_id: str) -> str:
    """A site id: the id grammar, and not the reserved ``fleet``."""
    if check_id(site_id, 'site id') == RESERVED_SITE_ID:
        raise SiteAggregatorError(f'site id {RESERVED_SITE_ID!r} is reserved for what the fleet server publishes')
    return site_id


def signer_key_id(site_id: str) -> str:
    """The key id of a site's aggregator identity."""
    return f'{check_site_id(site_id)}_aggregator'


def seal_context(site_id: str) -> bytes:
    """What a site's sealed seal key is bound to (one site)."""
    return SEAL_CONTEXT + check_site_id(site_id).encode()


def sites_file(paths: FleetPaths) -> Path:
    """The fleet server's list of site aggregators (the aggregator's ``site_aggregators_file``)."""
    return paths.server / SITES_FILE


def read_sites(path: Path) -> dict[str, dict]:
    """The sites `path` lists (empty if it does not exist yet), checked like the aggregator checks them."""
    if not path.exists():
        return {}
    try:
        sites = json.loads(path.read_text())['sites']
        site_aggregators_from_mapping(sites)
    except (OSError, TypeError, KeyError, ValueError, AttributeError) as error:
        raise SiteAggregatorError(f'{path}: not a site aggregators file ({error})') from None
    return dict(sites)


def _write_sites(path: Path, sites: dict[str, dict]) -> None:
    """Replace `path` atomically (written to a new name, then renamed over it)."""
    temporary = path.with_name(f'.{path.name}.{secrets.token_hex(8)}.tmp')
    keystore.write_private_file(temporary, json.dumps({'sites': sites}, indent=2, sort_keys=True).encode(),
                                'site aggregators file')
    os.replace(temporary, path)


def _robot_keys(kms: KeyManagementSystem, robots: list[str]) -> dict[str, bytes]:
    keys = {}
    for robot in robots:
        check_id(robot, 'robot id')
        if robot in keys:
            raise SiteAggregatorError(f'robot {robot!r} is given twice')
        try:
            keys[robot] = kms.public_key_for(robot, Role.ROBOT)
        except KMSError as error:
            raise SiteAggregatorError(f'robot {robot!r} is not an active robot of this fleet ({error})') from None
    return keys


def _trust(kms: KeyManagementSystem, robot_keys: dict[str, bytes]) -> bytes:
    pinned = {key_id: {'role': role.value, 'public_key': kms.public_key_for(key_id, role).hex()}
              for key_id, role in SERVER_IDENTITIES}
    pinned.update({robot: {'role': Role.ROBOT.value, 'public_key': key.hex()} for robot, key in robot_keys.items()})
    return json.dumps({'keys': pinned}, indent=2, sort_keys=True).encode()


def _outputs(site_id: str, out_dir: Path) -> tuple[Path, Path, Path]:
    return (out_dir / f'{site_id}_aggregator.key', out_dir / f'{site_id}_seal.key', out_dir / f'{site_id}_trust.json')


def create_site_aggregator(paths: FleetPaths, site_id: str, robots: list[str], passphrase: bytes,
                           out_dir: Path) -> SiteAggregatorFiles:
    """Make a site's aggregator identity, seal key and trust file in `out_dir`, then register the identity in
    the KMS and the site in `sites_file` (module docstring). Everything that would be refused is checked
    before a key is made; the written files are removed if the KMS refuses the identity."""
    kms = require_provisioned(paths)
    key_id = signer_key_id(site_id)
    if not robots:
        raise SiteAggregatorError(f'site {site_id!r}: give its robots (a site aggregator sums at least one)')
    robot_keys = _robot_keys(kms, robots)
    if key_id in {record.metadata.key_id for record in kms.list_keys()}:
        raise SiteAggregatorError(f'key {key_id!r} is already registered: site {site_id!r} has an aggregator '
                                  'identity (revoke it with `tensorguard kms revoke` to retire the site)')
    listed = sites_file(paths)
    sites = read_sites(listed)
    if site_id in sites:
        raise SiteAggregatorError(f'{listed}: already lists site {site_id!r}; refusing to replace its keys')
    taken = {robot: site for site, spec in sites.items() for robot in spec['robots']}
    if clash := sorted(set(robots) & set(taken)):
        raise SiteAggregatorError(f'{listed}: robot {clash[0]!r} is already summed by site {taken[clash[0]]!r}')
    outputs = _outputs(site_id, out_dir)
    for path in outputs:
        if path.exists() or path.is_symlink():
            raise keystore.KeyFileExists(f'{path}: already exists; refusing to overwrite a site aggregator file')
    keystore.load_key(paths.server_key(AGGREGATOR_ID), passphrase)  # the fleet's passphrase, not a new one
    identity_file, seal_file, trust_file = outputs
    seal_key = SealedBoxKey()
    written: list[Path] = []
    try:
        identity = keystore.generate_key(identity_file, passphrase=passphrase, key_id=key_id,
                                         role=Role.SITE_AGGREGATOR)
        written.append(identity_file)
        keystore.seal_secret(seal_file, seal_key.secret_bytes(), passphrase, seal_context(site_id))
        written.append(seal_file)
        keystore.write_private_file(trust_file, _trust(kms, robot_keys), 'site trust file')
        written.append(trust_file)
        kms.register_key(key_id, KeyMetadata(key_id=key_id, created_at=datetime.now(timezone.utc),
                                             owner=f'site:{site_id}', role=Role.SITE_AGGREGATOR,
                                             public_key=identity.public_key_bytes()))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    sites[site_id] = {'signer_key_id': key_id, 'seal_key': seal_key.public_key.hex(), 'robots': list(robots)}
    _write_sites(listed, sites)
    return SiteAggregatorFiles(site_id, key_id, identity_file, seal_file, trust_file, listed,
                               fingerprint(identity.public_key_bytes()), fingerprint(seal_key.public_key))


def load_trust(path: str | os.PathLike) -> PinnedKeys:
    """The public keys of a site trust file (0600, the keystore's checks); `SiteAggregatorError` naming what is
    wrong."""
    data = keystore.read_private_file(path, 'site trust file', MAX_TRUST_BYTES)
    try:
        keys = json.loads(data)['keys']
        pinned = {check_id(key_id, 'key id'): (Role(entry['role']), bytes.fromhex(entry['public_key']))
                  for key_id, entry in keys.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise SiteAggregatorError(f'{path}: not a site trust file ({type(error).__name__}: {error})') from None
    missing = [key_id for key_id, role in SERVER_IDENTITIES if pinned.get(key_id, (None,))[0] is not role]
    if missing:
        raise SiteAggregatorError(f'{path}: does not pin the fleet identities {missing}')
    return PinnedKeys(pinned)


@dataclass(frozen=True)
class SiteAggregatorKeys:
    """What a site gateway signs and opens with, and the public keys it checks with."""

    signer: Identity
    seal_key: SealedBoxKey
    trust: PinnedKeys


def load_site_aggregator(site_id: str, identity_file: str | os.PathLike, seal_file: str | os.PathLike,
                         trust_file: str | os.PathLike, passphrase: bytes) -> SiteAggregatorKeys:
    """Load a site gateway's keys (the keystore's checks; `WrongPassphrase` for a wrong passphrase) and check
    the identity is this site's aggregator."""
    signer = keystore.load_key(identity_file, passphrase)
    if signer.role is not Role.SITE_AGGREGATOR or signer.key_id != signer_key_id(site_id):
        raise SiteAggregatorError(f'{identity_file}: holds {signer.role.value} key {signer.key_id!r}, not the '
                                  f'site aggregator identity {signer_key_id(site_id)!r}')
    seal_key = SealedBoxKey.from_secret_bytes(keystore.unseal_secret(seal_file, passphrase, seal_context(site_id)))
    return SiteAggregatorKeys(signer, seal_key, load_trust(trust_file))
