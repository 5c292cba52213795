"""`tensorguard` operator command line: info, keygen, bench, the KMS (register, revoke, rotate, list,
verify-log), a fleet (init, enroll, rotate, revoke, status, gateway-cert,
site-aggregator-key) and a robot's side of enrolment (install).
Other installed packages add sub-commands through the ``tensorguard.commands`` entry-point group
(``tensorguard dashboard`` from tensorguard_monitor, ``tensorguard robot-import-bag`` and
``robot-export-dataset`` from tensorguard_edge); this package never imports them.

Exit codes: 0 success, 2 usage error (including a malformed key id or a non-positive count), 3 key
file error (also a wrong, short or missing passphrase), 4 KMS refusal or unusable KMS files (audit log
or state path not a readable regular file), 5 audit log or state tampered, 6 HSM error, 7 fleet
directory, bundle or robot directory refused or unusable (and `fleet status` finding problems).
Every failure prints one `error:` line, never a traceback. Passphrases come from
TENSORGUARD_KEY_PASSPHRASE or a terminal prompt, never from the command line.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

from . import fleet, gateway_certs, keystore, site_keys, wire
from .fleet import FleetPaths
from .hsm import DEFAULT_MODULE, MODULE_ENV, HsmError, HsmSession
from .identity import InvalidId, Role, check_id, fingerprint
from .kms import AuditLogTampered, KeyManagementSystem, KeyMetadata, KMSError, StateMismatch

AUDIT_LOG_ENV = 'TENSORGUARD_KMS_AUDIT_LOG'
EXIT_OK, EXIT_USAGE, EXIT_KEY_FILE, EXIT_KMS, EXIT_TAMPERED, EXIT_HSM, EXIT_FLEET = 0, 2, 3, 4, 5, 6, 7
# The fleet server's command that signs and installs the initial model (package tensorguard_aggregator).
PUBLISH_INITIAL_MODEL = 'ros2 run tensorguard_aggregator publish_initial_model'


# Sub-commands of other packages: entry-point group, and the ones this command knows by name (help text,
# and the package to name when it is not installed).
COMMAND_GROUP = 'tensorguard.commands'
KNOWN_COMMANDS = {
    'dashboard': ('tensorguard_monitor', 'serve the fleet web dashboard and Prometheus /metrics'),
    'robot-import-bag': ('tensorguard_edge', "import demonstrations from rosbag2 bags into a robot's store"),
    'robot-export-dataset': ('tensorguard_edge', "export a robot's store as a LeRobot v3.0 dataset"),
}


class CliError(Exception):
    """An operator-facing failure with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of packages or bytes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} must be at least 1')
    return value


def _key_id(text: str) -> str:
    """argparse type: a key id of the id grammar (identity.ID_PATTERN)."""
    try:
        return check_id(text, 'key id')
    except InvalidId as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _version(distribution: str) -> str:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return 'not installed'


def _info(_: argparse.Namespace) -> None:
    module = os.environ.get(MODULE_ENV, DEFAULT_MODULE)
    rows = [
        ('tensorguard_crypto', _version('tensorguard_crypto')),
        ('wire schema version', str(wire.SCHEMA_VERSION)),
        ('update package cap', f'{wire.DEFAULT_MAX_PACKAGE_BYTES} bytes'),
        ('identity keys', 'Ed25519 (RFC 8032), 128-bit classical security'),
        ('key files', f'scrypt N=2^{keystore.new_file_cost()} r={keystore.SCRYPT_R} '
                      f'p={keystore.SCRYPT_P} + AES-256-GCM, mode 0600'),
        ('passphrase variable', keystore.PASSPHRASE_ENV),
        ('PKCS#11 module', f'{module} ({"present" if Path(module).is_file() else "missing"})'),
        ('cryptography', _version('cryptography')),
        ('msgpack', _version('msgpack')),
        ('python-pkcs11', _version('python-pkcs11')),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')


def read_passphrase(what: str, new: bool) -> bytes:
    """From TENSORGUARD_KEY_PASSPHRASE, else typed at the terminal (twice for new keys); never from argv."""
    value = os.environ.get(keystore.PASSPHRASE_ENV)
    if not value:
        if not sys.stdin.isatty():
            raise CliError(f'set {keystore.PASSPHRASE_ENV} or run interactively to enter the passphrase of {what}',
                           EXIT_KEY_FILE)
        value = getpass.getpass(f'{"New passphrase" if new else "Passphrase"} for {what}: ')
        if new and value != getpass.getpass('Repeat passphrase: '):
            raise CliError('passphrases differ', EXIT_KEY_FILE)
    return keystore.resolve_passphrase(value)


def _print_public(key_id: str, role: Role, public_key: bytes, where: str) -> None:
    print(f'key_id       {key_id}\nrole         {role.value}\nlocation     {where}\n'
          f'public_key   {public_key.hex()}\nfingerprint  {fingerprint(public_key)}')


def _keygen(args: argparse.Namespace) -> None:
    role = Role(args.role)
    if args.path.startswith('hsm://'):
        with HsmSession(args.path) as session:
            signer = session.generate_signer(args.key_id, role)
            _print_public(args.key_id, role, signer.public_key_bytes(), args.path)
        return
    identity = keystore.generate_key(args.path, args.security_level, read_passphrase('the new key', new=True),
                                     key_id=args.key_id, role=role, scrypt_log2_n=args.scrypt_log2_n)
    _print_public(identity.key_id, role, identity.public_key_bytes(), args.path)


def _public_key_from(args: argparse.Namespace, key_id: str) -> bytes:
    if args.public_key:
        try:
            return bytes.fromhex(args.public_key)
        except ValueError:
            raise CliError('--public-key must be hex', EXIT_USAGE) from None
    if args.key_file:
        if args.key_file.startswith('hsm://'):
            with HsmSession(args.key_file) as session:
                return session.signer(key_id, Role(args.role)).public_key_bytes()
        info = keystore.read_key_info(args.key_file)
        if info.key_id != key_id:
            raise CliError(f'{args.key_file} holds key {info.key_id!r}, not {key_id!r}', EXIT_KEY_FILE)
        return info.public_key
    return b''


def _kms(args: argparse.Namespace) -> KeyManagementSystem:
    audit_log = args.audit_log or os.environ.get(AUDIT_LOG_ENV)
    if not audit_log:
        raise CliError(f'give --audit-log or set {AUDIT_LOG_ENV}', EXIT_USAGE)
    return KeyManagementSystem(audit_log_path=audit_log, state_path=args.state)


def _record_line(record) -> str:
    key = record.metadata.public_key
    return (f'{record.metadata.key_id:<24} {record.metadata.role.value:<12} {record.status.value:<8} '
            f'v{record.version:<3} {record.metadata.owner:<20} {fingerprint(key) if key else "-"}')


def _register(args: argparse.Namespace) -> None:
    metadata = KeyMetadata(key_id=args.key_id, created_at=datetime.now(timezone.utc), owner=args.owner,
                            security_level=args.security_level, role=Role(args.role),
                            public_key=_public_key_from(args, args.key_id))
    print(_record_line(_kms(args).register_key(args.key_id, metadata)))


def _rotate(args: argparse.Namespace) -> None:
    kms = _kms(args)
    args.role = kms.get(args.key_id).metadata.role.value
    public_key = _public_key_from(args, args.key_id)
    if not public_key:
        raise CliError('rotate needs --key-file or --public-key', EXIT_USAGE)
    print(_record_line(kms.rotate_key(args.key_id, public_key, args.reason)))


def _revoke(args: argparse.Namespace) -> None:
    print(_record_line(_kms(args).revoke_key(args.key_id, args.reason)))


def _list(args: argparse.Namespace) -> None:
    records = _kms(args).list_keys()
    if args.json:
        print(json.dumps([record.to_json() for record in records], indent=1))
    else:
        for record in records:
            print(_record_line(record))


def _verify_log(args: argparse.Namespace) -> None:
    report = _kms(args).verify_log()
    print(f'audit log OK: {report.entries} entries, head {report.head_hash}')


def _fleet_init(args: argparse.Namespace) -> None:
    paths = FleetPaths(args.fleet_dir)
    fleet.require_unprovisioned(paths)
    for record in fleet.provision_server(paths, read_passphrase('the fleet server keys', new=True), args.owner):
        print(_record_line(record))
    print(f'fleet {paths.root}: server identities in {paths.server}, KMS audit log {paths.kms_log}. '
          f'Next: enrol robots with `tensorguard fleet enroll {paths.root} ROBOT --bundle FILE` and publish '
          f'the initial model with `{PUBLISH_INITIAL_MODEL} {paths.root} --policy FILE --held-out DIR` '
          '(docs/operations.md, "Provisioning").')


def _print_bundle(record, bundle: Path) -> None:
    print(_record_line(record))
    print(f'bundle {bundle} (mode 0600): carry it to the robot only, run `tensorguard robot install {bundle} DIR` '
          'there, then delete it')


def _fleet_enroll(args: argparse.Namespace) -> None:
    paths = FleetPaths(args.fleet_dir)
    fleet.check_enrollment(paths, args.robot_id, args.bundle)
    passphrase = read_passphrase(f'the key of {args.robot_id}', new=True)
    _print_bundle(fleet.enroll_robot_bundle(paths, args.robot_id, passphrase, args.bundle, args.owner), args.bundle)


def _fleet_rotate(args: argparse.Namespace) -> None:
    paths = FleetPaths(args.fleet_dir)
    fleet.check_enrollment(paths, args.robot_id, args.bundle, rotate=True)
    passphrase = read_passphrase(f'the new key of {args.robot_id}', new=True)
    _print_bundle(fleet.rotate_robot_bundle(paths, args.robot_id, passphrase, args.bundle, args.reason), args.bundle)


def _fleet_revoke(args: argparse.Namespace) -> None:
    print(_record_line(fleet.revoke_robot(FleetPaths(args.fleet_dir), args.robot_id, args.reason)))


def _fleet_gateway_cert(args: argparse.Namespace) -> None:
    if args.site is not None:
        common_name = gateway_certs.site_common_name(args.site)
    else:
        common_name = gateway_certs.SERVER_NAME if args.server else gateway_certs.ROUTER_NAME
    fleet.require_provisioned(FleetPaths(args.fleet_dir))
    issued = gateway_certs.issue_certificate(FleetPaths(args.fleet_dir), read_passphrase('the fleet keys', new=False),
                                             common_name, args.out, args.host, args.days)
    print(f'common name      {issued.common_name}\n'
          f'certificate      {issued.certificate} (sha256 {issued.fingerprint})\n'
          f'private key      {issued.private_key} (mode 0600, unencrypted PEM: keep it on that gateway only)\n'
          f'fleet gateway CA {issued.ca_certificate} (sha256 {issued.ca_fingerprint})\n'
          'Next: give these three files to that gateway or router (docs/gateway.md, "Certificates").')


def _fleet_site_aggregator_key(args: argparse.Namespace) -> None:
    made = site_keys.create_site_aggregator(FleetPaths(args.fleet_dir), args.site, args.robot,
                                            read_passphrase('the fleet keys', new=False), args.out)
    print(f'site             {made.site_id} (robots {", ".join(args.robot)})\n'
          f'identity         {made.identity_file} (key id {made.signer_key_id}, role site_aggregator, '
          f'fingerprint {made.signer_fingerprint}; registered in the KMS)\n'
          f'seal key         {made.seal_file} (X25519, fingerprint {made.seal_fingerprint})\n'
          f'trust file       {made.trust_file}\n'
          f'site list        {made.sites_file}\n'
          'Both keys are encrypted under the fleet passphrase (mode 0600). Next: give the three files to that '
          "site's gateway only, and set the aggregator's site_aggregation: true and site_aggregators_file: "
          f'{made.sites_file} (docs/site-aggregation.md).')


def _identity_line(identity: fleet.IdentityStatus) -> str:
    reason = f'  ({identity.revocation_reason})' if identity.revocation_reason else ''
    return (f'  {identity.key_id:<24} {identity.role:<12} {identity.status:<8} v{identity.version:<3} '
            f'{identity.fingerprint}{reason}')


def _fleet_status(args: argparse.Namespace) -> None:
    status = fleet.fleet_status(FleetPaths(args.fleet_dir))
    if args.json:
        print(json.dumps(status.to_json(), indent=1))
    else:
        revoked = sum(robot.status == 'revoked' for robot in status.robots)
        rounds = (f'{status.rounds} on disk, {status.rounds_closed} closed'
                  + (f', round {status.round_open} open' if status.round_open is not None else '')
                  + f'; the key service decrypted {status.rounds_decrypted}')
        models = (f'{status.model_versions} on disk, current version {status.current_model}'
                  if status.current_model is not None else
                  f'none yet: the aggregator needs a signed initial model; publish it with '
                  f'`{PUBLISH_INITIAL_MODEL} {status.root} --policy FILE --held-out DIR`')
        print('\n'.join([
            f'fleet directory    {status.root}',
            f'KMS audit log      verified: {status.audit_log_entries} entries, head {status.audit_log_head}',
            'server identities', *map(_identity_line, status.server_identities),
            f'robots             {len(status.robots) - revoked} active, {revoked} revoked',
            *map(_identity_line, status.robots),
            f'models             {models}',
            f'rounds             {rounds}',
            'problems           ' + ('none' if not status.problems else ''), *(f'  {p}' for p in status.problems)]))
    if status.problems:
        raise CliError(f'fleet status found {len(status.problems)} problem(s)', EXIT_FLEET)


def _robot_install(args: argparse.Namespace) -> None:
    files = fleet.install_bundle(args.bundle, args.robot_dir, read_passphrase('the robot key in the bundle', new=False),
                                 args.replace)
    robot_dir = args.robot_dir.resolve()
    print(f'installed {files.robot_id} (public key fingerprint {fingerprint(files.public_key)}) into {robot_dir}\n'
          f'robot launch arguments: robot_id:={files.robot_id} key_path:={robot_dir / fleet.ROBOT_KEY_FILE} '
          f'trust_path:={robot_dir / fleet.TRUST_FILE}')


def _timed(action, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        action()
    return (time.perf_counter() - start) / repeats


def _bench(args: argparse.Namespace) -> None:
    from .identity import Identity
    from .verify import RoundVerifier
    from .wire import ExpertSlice, RoundConfigPackage, SafetyStats, UpdatePackage
    server, robots = Identity.generate('server', Role.SERVER), [
        Identity.generate(f'robot_{i}') for i in range(args.packages)]
    now = time.time()
    config = RoundConfigPackage(
        round_id=1, round_seed=os.urandom(32), model_version=1, num_coordinates=1, total_coordinates=1,
        num_experts=1, clipping_norm=1.0, noise_mu=1.0, scale=1.0, plaintext_bits=16, min_clients=1,
        security_level=128, ring_degree=1024, modulus_bits=27, deadline=now + 3600, quorum=1,
        round_key=b'', aggregator_transport_key=bytes(wire.TRANSPORT_KEY_BYTES), key_service_key_id='ks',
        aggregator_key_id='agg', signer_key_id='server',
        created_at=now).signed_by(server)
    packages = [UpdatePackage(
        robot_id=robot.key_id, round_id=1, round_seed=config.round_seed, config_digest=config.config_digest(),
        model_version=1, created_at=now, body_chunks=1, expert_metadata=(ExpertSlice(0, 1, 0),),
        safety_stats=SafetyStats(0.1, 1e-6, 0.0, 1.0, 1, 1), bodies=os.urandom(args.body_bytes),
        key_ciphertext=os.urandom(4096)).signed_by(robot).serialize() for robot in robots]
    with tempfile.TemporaryDirectory() as directory:
        kms = KeyManagementSystem(Path(directory) / 'audit.log')
        for robot in robots:
            kms.register_key(robot.key_id, KeyMetadata(robot.key_id, datetime.now(timezone.utc), 'bench',
                                                       public_key=robot.public_key_bytes()))
        verifier = RoundVerifier(kms, config)
        verify_seconds = _timed(lambda: [verifier.verify(data) for data in packages], 1) / len(packages)
    identity, cost = robots[0], keystore.new_file_cost()
    rows = [
        ('package size', f'{len(packages[0])} bytes'),
        ('UpdatePackage.deserialize', f'{_timed(lambda: UpdatePackage.deserialize(packages[0]), 20) * 1e3:.3f} ms'),
        ('RoundVerifier.verify (decode, KMS lookup, signature)', f'{verify_seconds * 1e3:.3f} ms'),
        ('Ed25519 sign (software)', f'{_timed(lambda: identity.sign(b"bench", b"m"), 200) * 1e6:.1f} us'),
        (f'scrypt key derivation N=2^{cost}',
         f'{_timed(lambda: keystore.derive_file_key(b"bench passphrase", bytes(16), cost), 3):.3f} s'),
    ]
    width = max(len(name) for name, _ in rows)
    print(f'tensorguard bench: {args.packages} packages, {args.body_bytes} body bytes each')
    for name, value in rows:
        print(f'{name:<{width}}  {value}')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `tensorguard` command."""
    parser = argparse.ArgumentParser(prog='tensorguard', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('info', help='versions, formats and parameters').set_defaults(handler=_info)

    keygen = commands.add_parser('keygen', help='create an Ed25519 identity key (file or hsm:// path)')
    keygen.add_argument('path', help='key file to create, or hsm://slot/N/LABEL / hsm://token/T/LABEL')
    keygen.add_argument('--key-id', required=True, type=_key_id)
    keygen.add_argument('--role', choices=[role.value for role in Role], default=Role.ROBOT.value)
    keygen.add_argument('--security-level', type=int, default=128)
    keygen.add_argument('--scrypt-log2-n', type=int, default=None,
                        help=f'key-file KDF cost, {keystore.MIN_SCRYPT_LOG2_N}..{keystore.MAX_SCRYPT_LOG2_N} '
                             f'(default: ${keystore.SCRYPT_COST_ENV}, else {keystore.DEFAULT_SCRYPT_LOG2_N})')
    keygen.set_defaults(handler=_keygen)

    bench = commands.add_parser('bench', help='time wire decoding, verification, signing and the key-file KDF')
    bench.add_argument('--packages', type=_positive_int, default=20)
    bench.add_argument('--body-bytes', type=_positive_int, default=1024 * 1024)
    bench.set_defaults(handler=_bench)

    kms = commands.add_parser('kms', help='key management system')
    kms.add_argument('--audit-log', help=f'audit log path (default ${AUDIT_LOG_ENV})')
    kms.add_argument('--state', help='state snapshot path (default: <audit log>.state.json)')
    actions = kms.add_subparsers(dest='action', required=True)
    for name, handler in (('register', _register), ('rotate', _rotate)):
        action = actions.add_parser(name)
        action.add_argument('key_id', type=_key_id)
        action.add_argument('--key-file', help='key file (public header only is read) or hsm:// path')
        action.add_argument('--public-key', help='raw Ed25519 public key in hex')
        action.set_defaults(handler=handler)
        if name == 'register':
            action.add_argument('--owner', required=True)
            action.add_argument('--role', choices=[role.value for role in Role], default=Role.ROBOT.value)
            action.add_argument('--security-level', type=int, default=128)
        else:
            action.add_argument('--reason', default='')
    revoke = actions.add_parser('revoke')
    revoke.add_argument('key_id', type=_key_id)
    revoke.add_argument('--reason', default='')
    revoke.set_defaults(handler=_revoke)
    listing = actions.add_parser('list')
    listing.add_argument('--json', action='store_true')
    listing.set_defaults(handler=_list)
    actions.add_parser('verify-log').set_defaults(handler=_verify_log)

    fleet_parser = commands.add_parser('fleet', help='provision and run a fleet directory (operator, server side)')
    fleet_actions = fleet_parser.add_subparsers(dest='action', required=True)
    init = fleet_actions.add_parser('init', help='server identities and the KMS in a new fleet directory')
    init.add_argument('fleet_dir', type=Path, help='fleet directory (server/ is created in it)')
    init.add_argument('--owner', default='fleet', help='owner recorded in the KMS')
    init.set_defaults(handler=_fleet_init)
    for name, handler, text in (('enroll', _fleet_enroll, 'create, enrol and bundle a new robot identity'),
                                ('rotate', _fleet_rotate, 'give a robot a new key (used from the next round)')):
        action = fleet_actions.add_parser(name, help=text)
        action.add_argument('fleet_dir', type=Path)
        action.add_argument('robot_id', type=_key_id)
        action.add_argument('--bundle', type=Path, required=True,
                            help='robot bundle to write: a tar of identity.key and trust.json, mode 0600, '
                                 'never overwritten')
        if name == 'enroll':
            action.add_argument('--owner', default='fleet', help='owner recorded in the KMS')
        else:
            action.add_argument('--reason', default='', help='recorded in the audit log')
        action.set_defaults(handler=handler)
    revoke_robot = fleet_actions.add_parser('revoke', help='revoke a robot, permanently')
    revoke_robot.add_argument('fleet_dir', type=Path)
    revoke_robot.add_argument('robot_id', type=_key_id)
    revoke_robot.add_argument('--reason', required=True, help='recorded in the audit log')
    revoke_robot.set_defaults(handler=_fleet_revoke)
    gateway_cert = fleet_actions.add_parser(
        'gateway-cert', help="issue a Zenoh gateway or router certificate from the fleet's gateway CA")
    gateway_cert.add_argument('fleet_dir', type=Path)
    holder = gateway_cert.add_mutually_exclusive_group(required=True)
    holder.add_argument('--site', type=_key_id, help="a site's gateway (common name site:<id>)")
    holder.add_argument('--server', action='store_true', help="the fleet server's gateway")
    holder.add_argument('--router', action='store_true', help='the fleet router (give --host for each name)')
    gateway_cert.add_argument('--out', type=Path, required=True,
                              help='directory for <name>.crt, <name>.key and ca.crt (nothing is overwritten)')
    gateway_cert.add_argument('--host', action='append', default=[],
                              help='DNS name or IP address the certificate is valid for (repeatable)')
    gateway_cert.add_argument('--days', type=_positive_int, default=365, help='validity in days (default 365)')
    gateway_cert.set_defaults(handler=_fleet_gateway_cert)
    site_key = fleet_actions.add_parser(
        'site-aggregator-key', help="make a site gateway's aggregator identity and seal key, and register the site")
    site_key.add_argument('fleet_dir', type=Path)
    site_key.add_argument('--site', type=_key_id, required=True, help='the site id (as in its gateway certificate)')
    site_key.add_argument('--robot', type=_key_id, action='append', required=True,
                          help='an enrolled robot the site gateway sums (repeat for each)')
    site_key.add_argument('--out', type=Path, required=True,
                          help='directory for <site>_aggregator.key, <site>_seal.key and <site>_trust.json '
                               '(nothing is overwritten)')
    site_key.set_defaults(handler=_fleet_site_aggregator_key)
    status = fleet_actions.add_parser('status', help='verify the KMS; identities, models and rounds on disk')
    status.add_argument('fleet_dir', type=Path)
    status.add_argument('--json', action='store_true')
    status.set_defaults(handler=_fleet_status)

    robot = commands.add_parser('robot', help="a robot's side of enrolment")
    robot_actions = robot.add_subparsers(dest='action', required=True)
    install = robot_actions.add_parser('install', help='check a robot bundle and install its two files')
    install.add_argument('bundle', type=Path)
    install.add_argument('robot_dir', type=Path, help='directory to hold identity.key and trust.json')
    install.add_argument('--replace', action='store_true',
                         help='replace an installed identity (after `fleet rotate`)')
    install.set_defaults(handler=_robot_install)
    _add_package_commands(commands)
    return parser


def _installed_commands() -> dict[str, importlib_metadata.EntryPoint]:
    """Sub-commands installed packages register in the `COMMAND_GROUP` entry-point group, by name."""
    return {entry.name: entry for entry in importlib_metadata.entry_points(group=COMMAND_GROUP)}


def _add_package_commands(commands: argparse._SubParsersAction) -> None:
    """List other packages' sub-commands in the help (`main` runs them before argparse sees their arguments)."""
    installed = _installed_commands()
    for name in sorted(set(installed) | set(KNOWN_COMMANDS)):
        package, text = KNOWN_COMMANDS.get(name, (None, None))
        if name in installed:
            text = text or installed[name].dist.metadata['Summary']
        else:
            text = f'{text} (needs {package}: not installed)'
        commands.add_parser(name, help=text, add_help=False)


def _run_package_command(name: str, argv: list[str]) -> int:
    """Run sub-command `name` of another package, or explain that its package is not installed."""
    entry = _installed_commands().get(name)
    if entry is None:
        print(f'error: `tensorguard {name}` needs the {KNOWN_COMMANDS[name][0]} package, which is not installed '
              '(it is part of the workspace: run scripts/bootstrap, then source scripts/env.sh)', file=sys.stderr)
        return EXIT_USAGE
    try:
        run = entry.load()
    except ImportError as error:
        print(f'error: `tensorguard {name}` could not be loaded from {entry.value}: {error}', file=sys.stderr)
        return EXIT_USAGE
    return run(argv, prog=f'tensorguard {name}')


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tensorguard` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in KNOWN_COMMANDS or argv[0] in _installed_commands()):
        return _run_package_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except CliError as error:
        print(f'error: {error}', file=sys.stderr)
        return error.exit_code
    except keystore.KeyStoreError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_KEY_FILE
    except (AuditLogTampered, StateMismatch) as error:
        print(f'error: audit log verification FAILED: {error}', file=sys.stderr)
        return EXIT_TAMPERED
    except KMSError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_KMS
    except HsmError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_HSM
    except fleet.ProvisioningError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_FLEET
    except OSError as error:
        if args.command not in ('fleet', 'robot'):
            raise
        print(f'error: {error}', file=sys.stderr)
        return EXIT_FLEET
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
