"""Publishing a fleet's initial model (ROS-free): the operator's policy file and held-out demonstrations,
checked, then installed as the signed ``server/models/1.tgm`` and ``server/held_out/``.

    ros2 run tensorguard_aggregator publish_initial_model FLEET_DIR --policy FILE --held-out DIR
    python -m tensorguard_aggregator.initial_model FLEET_DIR --policy FILE --held-out DIR

The policy file is an `MoEPolicy` as `MoEPolicy.state_bytes` writes it, read back with torch's weights-only
unpickler (`MoEPolicy.from_bytes`): a file whose pickle names anything but tensors and plain values is
refused without running it. The held-out directory is a `DemonstrationStore` of the server's own
demonstrations (the gate's KL check runs on their states); every episode must be of a task in the policy's
vocabulary, with its observation and action sizes. Both are only read.

The initial model is published once: a fleet that already has a model or a held-out set is refused.
Everything is checked before anything is installed: the fleet and its KMS, the policy, every held-out
episode (copied, each checked, into a staging directory inside ``server/``), the passphrase and that the
server key is the one the KMS enrolled. The staged set is then renamed into place and the model signed
(`Aggregator.publish_model`) and written. A refusal or failure at any step removes what was staged or
installed.

Exit codes: 0 published, 2 usage, 3 key file or passphrase (wrong, short, missing), 4 KMS refusal, 5 audit
log or state tampered, 7 fleet directory refused (not provisioned, initial model already published, not
writable), 8 policy file refused, 9 held-out set refused. Every failure prints one `error:` line. The
passphrase comes from TENSORGUARD_KEY_PASSPHRASE or a terminal prompt, never from the command line.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tensorguard_aggregator.held_out import MAX_BYTES, held_out_dir
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.cli import (
    EXIT_FLEET,
    EXIT_KEY_FILE,
    EXIT_KMS,
    EXIT_OK,
    EXIT_TAMPERED,
    CliError,
    read_passphrase,
)
from tensorguard_crypto.fleet import SERVER_ID, FleetPaths, ProvisioningError, require_provisioned
from tensorguard_crypto.identity import Role, fingerprint
from tensorguard_crypto.keystore import KeyStoreError
from tensorguard_crypto.kms import AuditLogTampered, KMSError, StateMismatch
from tensorguard_crypto.wire import DEFAULT_MAX_MODEL_BYTES
from tensorguard_learning.demonstrations import LOG_NAME, DemonstrationStore
from tensorguard_learning.errors import LearningError, UpdateFormatError
from tensorguard_learning.policy import MoEPolicy

EXIT_POLICY, EXIT_HELD_OUT = 8, 9


class ModelAlreadyPublished(ProvisioningError):
    """The fleet already has a model or a held-out set (the initial model is published once)."""

    reason = 'model_exists'


class InvalidPolicyFile(ProvisioningError):
    """The policy file is missing, too large, or not a policy `MoEPolicy.from_bytes` reads."""

    reason = 'invalid_policy_file'


class InvalidHeldOutSet(ProvisioningError):
    """The held-out directory is not a readable store of complete episodes that fit the policy."""

    reason = 'invalid_held_out'


@dataclass(frozen=True)
class PublishedModel:
    """What `publish_initial_model` installed."""

    model_path: Path
    model_version: int
    signer_fingerprint: str
    policy: MoEPolicy
    policy_sha256: str
    held_out_dir: Path
    held_out_episodes: dict[str, int]
    held_out_frames: int


def read_policy_file(path: Path) -> tuple[MoEPolicy, str]:
    """The policy in `path` (at most the wire's model size), read without running any pickled code, and the
    file's SHA-256 (hex: the operator compares it with the file they made; the file itself is not signed)."""
    try:
        if not path.is_file():
            raise InvalidPolicyFile(f'{path}: not a regular file')
        if path.stat().st_size > DEFAULT_MAX_MODEL_BYTES:
            raise InvalidPolicyFile(f'{path}: larger than {DEFAULT_MAX_MODEL_BYTES} bytes')
        data = path.read_bytes()
        return MoEPolicy.from_bytes(data), hashlib.sha256(data).hexdigest()
    except UpdateFormatError as error:
        raise InvalidPolicyFile(f'{path}: not a TensorGuard policy file ({error})') from None
    except OSError as error:
        raise InvalidPolicyFile(f'{path}: cannot be read ({error.strerror or error})') from None


def _source_log(directory: Path) -> Path:
    """The store log of the operator's held-out directory, checked to be readable in size."""
    log = directory / LOG_NAME
    if not directory.is_dir():
        raise InvalidHeldOutSet(f'{directory}: not a directory (expected a demonstration store)')
    if not log.is_file():
        raise InvalidHeldOutSet(f'{directory}: holds no {LOG_NAME} (not a demonstration store)')
    if log.stat().st_size > MAX_BYTES:
        raise InvalidHeldOutSet(f'{log}: larger than the server store cap of {MAX_BYTES} bytes')
    return log


def copy_held_out(source: Path, target: Path, policy: MoEPolicy) -> tuple[dict[str, int], int]:
    """Copy every episode of the store `source` into a new store `target`, refusing a store with a torn tail,
    no episode, or an episode whose task or sizes are not the policy's; returns (episodes per task, frames)."""
    log = _source_log(source)
    vocabulary, cfg = set(policy.cfg.tasks), policy.cfg
    episodes: Counter[str] = Counter()
    frames = 0
    with tempfile.TemporaryDirectory(dir=target.parent, prefix='.source-') as scratch:
        shutil.copyfile(log, Path(scratch) / LOG_NAME)  # the operator's store is never opened for writing
        try:
            with DemonstrationStore(scratch, max_bytes=MAX_BYTES) as store, \
                    DemonstrationStore(target, max_bytes=MAX_BYTES, when_full='refuse') as copy:
                if store.dropped_tail_bytes:
                    raise InvalidHeldOutSet(f'{log}: ends in {store.dropped_tail_bytes} bytes that are not a '
                                            'complete episode (still being written, or damaged)')
                for demo in store.iter_episodes():
                    where = f'{log}: episode {demo.episode_index}'
                    if demo.task not in vocabulary:
                        raise InvalidHeldOutSet(f"{where} is of task {demo.task!r}, not in the policy's task "
                                                f'vocabulary {list(cfg.tasks)}')
                    sizes = (demo.observation_state.shape[1], demo.action.shape[1])
                    if sizes != (cfg.obs_dim, cfg.action_dim):
                        raise InvalidHeldOutSet(f'{where} has observation and action sizes {sizes}, the policy '
                                                f'{(cfg.obs_dim, cfg.action_dim)}')
                    copy.append_episode(demo)
                    episodes[demo.task] += 1
                    frames += demo.num_frames
        except (LearningError, ValueError, KeyError, TypeError) as error:
            raise InvalidHeldOutSet(f'{log}: not a readable demonstration store '
                                    f'({type(error).__name__}: {str(error)[:200]})') from None
    if not episodes:
        raise InvalidHeldOutSet(f'{log}: holds no complete episode (the gate needs held-out states)')
    return dict(episodes), frames


@contextmanager
def _exclusive(paths: FleetPaths) -> Iterator[None]:
    """Hold the server directory's publication lock (a second publisher at the same time is refused)."""
    descriptor = os.open(paths.server, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelAlreadyPublished(f'{paths.server}: another initial model is being published') from None
        yield
    finally:
        os.close(descriptor)


def _refuse_published(paths: FleetPaths) -> None:
    held_out = held_out_dir(paths)
    if paths.models_dir.is_dir() and any(paths.models_dir.iterdir()):
        raise ModelAlreadyPublished(f'{paths.models_dir}: the fleet already has a model; the initial model is '
                                    'published once (later versions come from rounds)')
    if held_out.exists() or held_out.is_symlink():
        raise ModelAlreadyPublished(f'{held_out}: already exists; the held-out set is published once, with the '
                                    'initial model (with no model on disk, an interrupted publication left it: '
                                    'remove it and publish again)')


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish_initial_model(paths: FleetPaths, policy_file: Path, held_out: Path, passphrase: bytes) -> PublishedModel:
    """Check the fleet, `policy_file`, the store `held_out` (staged), the passphrase and the server key, then
    install the held-out set and sign and write model version 1 (module docstring); nothing stays behind on
    failure."""
    kms = require_provisioned(paths)
    kms.verify_log()
    with _exclusive(paths):
        _refuse_published(paths)
        policy, digest = read_policy_file(policy_file)
        target = held_out_dir(paths)
        with tempfile.TemporaryDirectory(dir=paths.server, prefix='.publish-') as staging:
            staged = Path(staging) / target.name
            episodes, frames = copy_held_out(held_out, staged, policy)
            aggregator = Aggregator(AggregatorSettings(fleet_dir=str(paths.root)), passphrase)
            signer = aggregator.server_identity.public_key_bytes()
            if kms.public_key_for(SERVER_ID, Role.SERVER) != signer:
                raise ProvisioningError(f'{paths.server_key(SERVER_ID)}: does not hold the server key the KMS '
                                        'enrolled')
            staged.rename(target)
            try:
                _fsync_directory(paths.server)
                package = aggregator.publish_model(policy, round_id=0, decision='initial')
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
    return PublishedModel(paths.models_dir / f'{package.model_version}.tgm', package.model_version,
                          fingerprint(signer), policy, digest, target, episodes, frames)


# The first entry an error is an instance of gives its exit code.
EXIT_CODES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int], ...] = (
    (InvalidPolicyFile, EXIT_POLICY), (InvalidHeldOutSet, EXIT_HELD_OUT), (ProvisioningError, EXIT_FLEET),
    (KeyStoreError, EXIT_KEY_FILE), ((AuditLogTampered, StateMismatch), EXIT_TAMPERED), (KMSError, EXIT_KMS),
    (OSError, EXIT_FLEET))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `publish_initial_model`; returns the exit code (module docstring)."""
    parser = argparse.ArgumentParser(prog='publish_initial_model', description=__doc__.splitlines()[0])
    parser.add_argument('fleet_dir', type=Path, help='fleet directory made by `tensorguard fleet init`')
    parser.add_argument('--policy', type=Path, required=True, help='policy file (MoEPolicy.state_bytes)')
    parser.add_argument('--held-out', type=Path, required=True,
                        help="demonstration store of the server's own held-out episodes")
    args = parser.parse_args(argv)
    paths = FleetPaths(args.fleet_dir)
    try:
        published = publish_initial_model(paths, args.policy, args.held_out,
                                          read_passphrase('the fleet server keys', new=False))
    except CliError as error:
        print(f'error: {error}', file=sys.stderr)
        return error.exit_code
    except (ProvisioningError, KeyStoreError, KMSError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return next(code for kinds, code in EXIT_CODES if isinstance(error, kinds))
    policy = published.policy
    print(f'published model version {published.model_version} ({published.model_path}, signed by {SERVER_ID} '
          f'{published.signer_fingerprint}) from {args.policy} (sha256 {published.policy_sha256})')
    print(f'policy: tasks {", ".join(policy.cfg.tasks)}; {policy.cfg.num_experts} experts, '
          f'{sum(policy.segment_sizes()):,} federated parameters')
    print(f'held-out set {published.held_out_dir}: {sum(published.held_out_episodes.values())} episodes, '
          f'{published.held_out_frames} frames (' + ', '.join(
              f'{task} {count}' for task, count in published.held_out_episodes.items()) + ')')
    print(f'Next: start the fleet server (`ros2 launch launch/fleet_server.launch.py '
          f"fleet_dir:={paths.root.resolve()}`, eval_tasks among the policy's tasks)")
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
