"""The aggregator's round state machine (ROS-free): announce, verify, sum, close, publish.

The aggregator never holds a key that opens a robot's update: robots seal their lattice bodies to
a fresh per-round transport key of the aggregator (so a network listener sees no body), and the
bodies are encrypted under per-robot keys that only the key service's round key recovers, summed.
The aggregator verifies each signed package, opens the seal, adds the bodies into a running sum and,
at quorum, asks the key service to decrypt the sum of exactly the accepted robots. A robot revoked
mid-round is taken out of the sum again (the scheme is additive). Everything a restart must not
lose is on disk before it is acknowledged:

    <server>/rounds/<id>/config.bin         the signed RoundConfigPackage
    <server>/rounds/<id>/transport.sealed   the round's X25519 transport secret (destroyed at close)
    <server>/rounds/<id>/updates/<robot>    every accepted UpdatePackage, written atomically
                                            (deleted at close with `delete_closed_updates`)
    <server>/rounds/<id>/site_sums/<site>   every accepted SitePartialSum (site aggregation on)
    <server>/rounds/<id>/removed/<robot>    updates taken out of the sum (revoked mid-round)
    <server>/rounds/<id>/quarantine/<robot> stored updates that failed re-verification on resume
    <server>/rounds/<id>/aggregate.bin      the key service's signed AggregateResult (DP-noised sum)
    <server>/rounds/<id>/outcome.json       written when the round is closed (absent: still open)
    <server>/models/<version>.tgm           signed ModelPackages; the highest valid one is current

Bad state on disk never stops the aggregator: an unreadable model file, round config or stored
update is set aside, logged and counted in `state_problems` (the node reports it), and the rest
is served.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_crypto.fleet import AGGREGATOR_ID, KEY_SERVICE_ID, SERVER_ID, FleetPaths, load_server_identity
from tensorguard_crypto.hybrid import HybridError, SealedBoxKey
from tensorguard_crypto.identity import Role
from tensorguard_crypto.keystore import KeyStoreError, destroy_secret, seal_secret, unseal_secret
from tensorguard_crypto.kms import KeyManagementSystem, KMSError
from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_crypto.secagg import BodyCiphertext, SecAggError
from tensorguard_crypto.site_sum import site_aggregators_from_mapping, site_sum_seal_context
from tensorguard_crypto.verify import (
    MalformedPackage,
    RoundVerifier,
    VerificationError,
    check_signature,
    decode,
    verify_model_package,
    verify_round_config,
    verify_round_key,
)
from tensorguard_crypto.wire import (
    AggregateRequest,
    AggregateResult,
    ModelPackage,
    RoundConfigPackage,
    SiteAggregatorEntry,
    SitePartialSum,
    UpdatePackage,
    model_package,
)
from tensorguard_learning.aggregation import Strategy, apply_update, strategy_from_name
from tensorguard_learning.compression import adapter_round_coordinates
from tensorguard_learning.policy import MoEPolicy
from tensorguard_ros.config_fields import POSITIVE, RoundSettings, described

logger = logging.getLogger(__name__)




@dataclass
class AggregatorSettings(RoundSettings):
    """How the aggregator runs rounds: the fleet's `RoundSettings` and its own (each field becomes a ROS parameter)."""

    fleet_dir: str = described('Fleet directory holding server/ (see provisioning).', '', read_only=True)
    quorum: int = described('Distinct robots needed before an aggregate may be decrypted.', 2,
                            minimum=2, read_only=True)
    coordinates_per_round: int = described(
        'k of shared random-k compression over expert coordinates; task segments are always sent '
        '(0: send every coordinate).', 0, minimum=0)
    round_deadline_s: float = described('Seconds a round collects updates.', 120.0, minimum=POSITIVE)
    server_learning_rate: float = described('Scale applied to the aggregated delta.', 1.0, minimum=POSITIVE)
    min_segment_weight: float = described(
        "An expert or task segment is updated only if the robots' summed usage weight for it reaches "
        'this (in robot-equivalents) and SEGMENT_NOISE_MARGIN times the DP noise std of that sum.', 0.1,
        minimum=0.0)
    delete_closed_updates: bool = described(
        "Delete a round's stored updates and site sums when it closes. Once its transport secret is destroyed "
        'nobody can open them; they keep only signatures (about 1 MB per robot and round). The config, signed '
        'aggregate and outcome stay. Off: kept for audit.', False)
    site_aggregation: bool = described(
        'Accept one partial sum per site from the site aggregators in site_aggregators_file instead of '
        "each robot's update (weakens integrity: docs/site-aggregation.md). Off by default.", False,
        read_only=True)
    site_aggregators_file: str = described(
        'YAML {sites: {<site>: {signer_key_id, seal_key, robots}}}, read when site_aggregation is on.', '',
        read_only=True)


def load_site_aggregators(path: str) -> tuple[SiteAggregatorEntry, ...]:
    """The site aggregators a `site_aggregators_file` lists; raises ValueError naming the file and what is wrong."""
    try:
        document = yaml.safe_load(Path(path).read_text())
        if not isinstance(document, dict) or not isinstance(document.get('sites'), dict) or not document['sites']:
            raise ValueError('needs a non-empty mapping under "sites"')
        return site_aggregators_from_mapping(document['sites'])
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f'site_aggregators_file {path!r}: {exc}') from None


# A segment's weighted mean is its decrypted sum divided by its decrypted weight; a weight within
# 10 noise standard deviations of zero would divide noise by noise, so such segments stay as they are.
SEGMENT_NOISE_MARGIN = 10.0


def segment_weight_floor(codec: update_codec.RoundCodec, contributors: int, min_segment_weight: float) -> float:
    """Smallest summed usage weight for which a segment is updated this round."""
    return max(min_segment_weight, SEGMENT_NOISE_MARGIN * codec.skellam.aggregate_stddev(contributors))


def plausible_sum_norm(codec: update_codec.RoundCodec, contributors: int) -> float:
    """Largest L2 norm an honest round's decoded sum reaches: every contributor at the clipping norm,
    plus twice the expected norm of the summed DP noise, plus the randomized rounding (at most one
    quantum per coordinate and contributor)."""
    skellam, root_dim = codec.skellam, math.sqrt(codec.skellam.dim)
    return contributors * (skellam.clipping_norm + root_dim / skellam.scale) \
        + 2 * skellam.aggregate_stddev(contributors) * root_dim


def apply_round_sum(model: MoEPolicy, summed: np.ndarray, floor: float, strategy: Strategy,
                    server_learning_rate: float, indices: np.ndarray | None = None
                    ) -> tuple[MoEPolicy, np.ndarray, int]:
    """The candidate a decoded round sum gives: (candidate, applied delta, frozen segment count).

    Segments whose summed weight is under `floor` stay as they are; the others move by their
    weighted mean delta, scaled by `server_learning_rate`.
    """
    summed = np.array(summed, dtype=np.float64)
    sizes = model.segment_sizes()
    frozen = int(np.count_nonzero(strategy.weight_sums(summed, sizes) < floor))
    delta = strategy.finalize(summed, sizes, indices, floor)
    candidate = model.clone()
    apply_update(candidate, delta, server_learning_rate)
    return candidate, delta, frozen


class RoundError(Refusal):
    """A round cannot proceed (raised with its reason)."""


@dataclass
class Candidate:
    """A decrypted, decoded round result applied to the current model."""

    round_id: int
    policy: MoEPolicy
    contributors: tuple[str, ...]
    delta_norm: float
    frozen_segments: int


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class UpdateUnusable(VerificationError):
    """A signed update whose sealed bodies do not open or parse (raised with its reason)."""


class OpenRound:
    """One round being collected: its signed config, transport key, verifier and running body sum."""

    def __init__(self, directory: Path, config: RoundConfigPackage, codec: update_codec.RoundCodec,
                 verifier: RoundVerifier, transport: SealedBoxKey) -> None:
        self.directory = directory
        self.config = config
        self.codec = codec
        self.verifier = verifier
        self.transport = transport
        self.body_sum = update_codec.BodySum(codec)
        self.site_sums: dict[str, tuple[BodyCiphertext, tuple[str, ...]]] = {}

    def open_body(self, package: UpdatePackage) -> BodyCiphertext:
        """The lattice bodies of a verified package: unsealed with the round's transport key, parsed."""
        context = update_codec.body_seal_context(package.robot_id, package.round_id, package.config_digest)
        return self._open_sealed(package.bodies, context, package.robot_id)

    def open_site_sum(self, record: SitePartialSum) -> BodyCiphertext:
        """The summed lattice bodies of a verified site partial sum: unsealed with the transport key, parsed."""
        context = site_sum_seal_context(record.site_id, record.round_id, record.config_digest)
        return self._open_sealed(record.summed_bodies, context, f'site {record.site_id}')

    def _open_sealed(self, sealed: bytes, context: bytes, owner: str) -> BodyCiphertext:
        """Unseal `sealed` with the round's transport key and parse its bodies; `owner` names them in refusals."""
        try:
            return self.body_sum.parse(self.transport.open(sealed, context))
        except HybridError as exc:
            raise UpdateUnusable(f'{owner}: sealed bodies do not open: {exc}', reason=Reason.UNSEALING_FAILED) from None
        except SecAggError as exc:
            raise UpdateUnusable(f'{owner}: bodies do not parse: {exc}', reason=Reason.MALFORMED_BODIES) from None

    def add_site_sum(self, record: SitePartialSum, body: BodyCiphertext) -> None:
        """Add a verified site's summed bodies once, remembering which robots they cover."""
        self.body_sum.add(body)
        self.site_sums[record.site_id] = (body, tuple(c.robot_id for c in record.contributions))

    @property
    def contributors(self) -> list[str]:
        """Robots whose updates were accepted, in order of arrival."""
        return [c.robot_id for c in self.verifier.contributions()]


class Aggregator:
    """Round state machine of the fleet server (see module docstring)."""

    def __init__(self, settings: AggregatorSettings, passphrase: bytes) -> None:
        self.settings = settings
        self.paths = FleetPaths(Path(settings.fleet_dir))
        self.kms: KeyManagementSystem = self.paths.kms()
        self.aggregator_identity = load_server_identity(self.paths, AGGREGATOR_ID, passphrase)
        self.server_identity = load_server_identity(self.paths, SERVER_ID, passphrase)
        self._passphrase = passphrase
        self.state_problems: Counter[str] = Counter()
        self.profile = DPProfile.from_fleet_parameters(asdict(settings))
        self.strategy = strategy_from_name(settings.strategy, quorum_threshold=settings.quorum)
        self.site_aggregators = (load_site_aggregators(settings.site_aggregators_file)
                                 if settings.site_aggregation else ())
        self.rounds_dir = self.paths.rounds_dir
        self.models_dir = self.paths.models_dir
        self.current: OpenRound | None = None
        self.model: ModelPackage | None = None
        self.model_policy: MoEPolicy | None = None
        self._load_latest_model()
        self._resume_open_round()

    # Models.
    def _problem(self, reason: Reason, detail: str) -> None:
        self.state_problems[reason] += 1
        logger.error('aggregator state: %s: %s', reason, detail)

    def _load_latest_model(self) -> None:
        """The highest model version that verifies; unreadable newer files are reported and skipped."""
        versions = sorted((int(p.stem) for p in self.models_dir.glob('*.tgm') if p.stem.isdigit()), reverse=True) \
            if self.models_dir.exists() else []
        for version in versions:
            path = self.models_dir / f'{version}.tgm'
            try:
                model = verify_model_package(path.read_bytes(), self.kms)
                if model.model_version != version:
                    raise MalformedPackage(f'{path.name} holds model version {model.model_version}', 'field_value')
                self.model, self.model_policy = model, MoEPolicy.from_bytes(model.parameters)
                return
            except (VerificationError, OSError, ValueError) as exc:
                self._problem(Reason.MODEL_FILE_UNREADABLE, f'{path}: {type(exc).__name__}: {exc}')

    def publish_model(self, policy: MoEPolicy, round_id: int, decision: str) -> ModelPackage:
        """Sign and persist a new model version derived from the current one."""
        parent = self.model.model_version if self.model else 0
        package = model_package(model_version=parent + 1, parent_version=parent, round_id=round_id,
                                parameters=policy.state_bytes(), gate_decision=decision,
                                signer_key_id=SERVER_ID, created_at=time.time()).signed_by(self.server_identity)
        write_atomic(self.models_dir / f'{package.model_version}.tgm', package.serialize())
        self.model, self.model_policy = package, policy
        return package

    # Rounds.
    def _round_ids(self) -> list[int]:
        if not self.rounds_dir.exists():
            return []
        return sorted(int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit())

    def next_round_id(self) -> int:
        """The id the next `open_round` will use (the key service issues that round's key first)."""
        ids = self._round_ids()
        return (ids[-1] + 1) if ids else 1

    def _codec(self, round_seed: bytes) -> update_codec.RoundCodec:
        indices = adapter_round_coordinates(round_seed, self.model_policy, self._num_coordinates())
        dim = self.strategy.vector_length(self.model_policy.segment_sizes(), indices)
        return update_codec.build_codec(self.profile, dim, self.settings.max_clients, self.settings.security_level,
                                        round_seed)

    def _num_coordinates(self) -> int:
        total = sum(self.model_policy.segment_sizes())
        k = self.settings.coordinates_per_round
        return total if k <= 0 else min(k, total)

    def _verifier(self, config: RoundConfigPackage, codec: update_codec.RoundCodec, clock) -> RoundVerifier:
        return RoundVerifier(self.kms, config, expected_bodies_bytes=codec.sealed_body_bytes,
                             expected_key_ciphertext_bytes=codec.key_ciphertext_bytes, clock=clock)

    def _transport_context(self, round_id: int) -> bytes:
        return f'{AGGREGATOR_ID}/round/{round_id}/transport'.encode()

    def open_round(self, round_key: bytes, deadline_s: float | None = None,
                   quorum: int | None = None) -> RoundConfigPackage:
        """Announce a new round with a fresh seed and transport key from the OS CSPRNG, carrying the
        key service's signed `round_key` for it; persisted before it is returned."""
        if self.current is not None:
            raise RoundError(f'round {self.current.config.round_id} is still open', reason='round_open')
        if self.model is None:
            raise RoundError('no initial model: provision one first', reason='no_model')
        round_id = self.next_round_id()
        seed = secrets.token_bytes(32)
        codec = self._codec(seed)
        transport = SealedBoxKey()
        now = time.time()
        config = RoundConfigPackage(
            round_id=round_id, round_seed=seed, model_version=self.model.model_version,
            num_coordinates=self._num_coordinates(), total_coordinates=sum(self.model_policy.segment_sizes()),
            num_experts=self.model_policy.cfg.num_experts,
            deadline=now + (deadline_s or self.settings.round_deadline_s), quorum=quorum or self.settings.quorum,
            round_key=round_key, aggregator_transport_key=transport.public_key, key_service_key_id=KEY_SERVICE_ID,
            aggregator_key_id=AGGREGATOR_ID, signer_key_id=AGGREGATOR_ID, created_at=now,
            aggregation_strategy=self.strategy.name, site_aggregators=self.site_aggregators,
            **update_codec.announce(codec)).signed_by(self.aggregator_identity)
        try:
            verify_round_key(config, self.kms)
        except VerificationError as exc:
            raise RoundError(f'round {round_id}: {exc}', reason=exc.reason) from None
        directory = self.rounds_dir / str(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        destroy_secret(directory / 'transport.sealed')
        seal_secret(directory / 'transport.sealed', transport.secret_bytes(), self._passphrase,
                    self._transport_context(round_id))
        write_atomic(directory / 'config.bin', config.serialize())
        self.current = OpenRound(directory, config, codec, self._verifier(config, codec, time.time), transport)
        return config

    def _resume_open_round(self) -> None:
        """Reopen the newest round if it was not closed; a round whose own state is unreadable is
        abandoned (recorded), a stored update that no longer verifies is quarantined."""
        ids = self._round_ids()
        if not ids or (self.rounds_dir / str(ids[-1]) / 'outcome.json').exists() or self.model is None:
            return
        directory = self.rounds_dir / str(ids[-1])
        try:
            config = verify_round_config((directory / 'config.bin').read_bytes(), self.kms)
            transport = SealedBoxKey.from_secret_bytes(unseal_secret(
                directory / 'transport.sealed', self._passphrase, self._transport_context(config.round_id)))
            if config.aggregation_strategy != self.strategy.name:
                raise ValueError(f'round announced strategy {config.aggregation_strategy}, '
                                 f'this aggregator runs {self.strategy.name}')
            codec = self._codec(config.round_seed)
        except (VerificationError, OSError, KeyStoreError, HybridError, KMSError, ValueError) as exc:
            self._problem(Reason.ROUND_STATE_UNREADABLE, f'round {ids[-1]}: {type(exc).__name__}: {exc}')
            self._abandon(directory, ids[-1], f'round state unreadable on resume ({type(exc).__name__})')
            return
        # Updates on disk were accepted before their deadline; re-verify everything but the clock.
        self.current = OpenRound(directory, config, codec, self._verifier(config, codec, None), transport)
        for path in sorted((directory / 'updates').glob('*.tgu')):
            try:
                package = self.current.verifier.verify(path.read_bytes())
                try:
                    body = self.current.open_body(package)
                except UpdateUnusable:
                    self.current.verifier.forget(package.robot_id)
                    raise
                self.current.body_sum.add(body)
            except (VerificationError, OSError) as exc:
                cause = getattr(exc, 'reason', 'unreadable')
                self._problem(Reason.QUARANTINED, f'round {config.round_id}: {path.name} ({cause}): {exc}')
                self._move(path, directory / 'quarantine')
        for path in sorted((directory / 'site_sums').glob('*.tgs')):
            try:
                self._add_site_sum(path.read_bytes())
            except (VerificationError, OSError) as exc:
                cause = getattr(exc, 'reason', 'unreadable')
                self._problem(Reason.QUARANTINED, f'round {config.round_id}: {path.name} ({cause}): {exc}')
                self._move(path, directory / 'quarantine')
        self.current.verifier.clock = time.time

    def _abandon(self, directory: Path, round_id: int, detail: str) -> None:
        try:
            write_atomic(directory / 'outcome.json', json.dumps(
                {'round_id': round_id, 'outcome': 'abandoned', 'reason': 'round_state_unreadable',
                 'detail': detail}, indent=2).encode())
        except OSError as exc:
            self._problem(Reason.STORAGE_ERROR, f'round {round_id}: outcome not writable: {exc}')

    @staticmethod
    def _move(path: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / path.name)

    def accept(self, data: bytes) -> UpdatePackage:
        """Verify one update, open its sealed bodies and add them; raises `VerificationError` (with a
        reason) otherwise, and nothing is recorded for a refused update."""
        if self.current is None:
            raise RoundError('no round is open', reason='no_open_round')
        package = self.current.verifier.verify(data)
        try:
            body = self.current.open_body(package)
            write_atomic(self.current.directory / 'updates' / f'{package.robot_id}.tgu', data)
        except (UpdateUnusable, OSError):
            self.current.verifier.forget(package.robot_id)
            raise
        self.current.body_sum.add(body)
        return package

    def accept_site_sum(self, data: bytes) -> SitePartialSum:
        """Verify a site aggregator's partial sum (verify.RoundVerifier.verify_site_sum), open its sealed
        sum and add it once for all its robots; refused with `site_aggregation_off` unless the switch is
        on. Raises `VerificationError` or `RoundError` with the reason; nothing is recorded then."""
        if not self.settings.site_aggregation:
            raise RoundError('site aggregation is off on this aggregator', reason=Reason.SITE_AGGREGATION_OFF)
        if self.current is None:
            raise RoundError('no round is open', reason='no_open_round')
        return self._add_site_sum(data, persist=True)

    def _add_site_sum(self, data: bytes, persist: bool = False) -> SitePartialSum:
        record = self.current.verifier.verify_site_sum(data)
        try:
            body = self.current.open_site_sum(record)
            if persist:
                write_atomic(self.current.directory / 'site_sums' / f'{record.site_id}.tgs', data)
        except (UpdateUnusable, OSError):
            for contribution in record.contributions:
                self.current.verifier.forget(contribution.robot_id)
            raise
        self.current.add_site_sum(record, body)
        return record

    def drop_revoked(self) -> list[str]:
        """Take every contributor revoked since it was accepted out of the running sum and the
        manifest (its stored update moves to removed/); returns their ids."""
        if self.current is None:
            return []
        revoked = [robot for robot in self.current.contributors if self.kms.is_revoked(robot)]
        for site, (body, robots) in list(self.current.site_sums.items()):
            if set(robots) & set(revoked):
                # One robot's bodies cannot be taken out of a site's sum: the whole site's sum goes.
                self.current.body_sum.remove(body)
                for robot in robots:
                    self.current.verifier.forget(robot)
                del self.current.site_sums[site]
                self._move(self.current.directory / 'site_sums' / f'{site}.tgs', self.current.directory / 'removed')
                logger.warning('round %d: %s of site %s was revoked; the site partial sum of %s is out of the sum',
                               self.current.config.round_id, sorted(set(robots) & set(revoked)), site, list(robots))
        for robot in revoked:
            path = self.current.directory / 'updates' / f'{robot}.tgu'
            if not path.exists():  # it came in a site's sum, gone with it above
                continue
            package = decode(UpdatePackage, path.read_bytes())
            self.current.body_sum.remove(self.current.open_body(package))
            self.current.verifier.forget(robot)
            self._move(path, self.current.directory / 'removed')
            logger.warning('round %d: %s was revoked; its update is out of the sum', self.current.config.round_id,
                           robot)
        return revoked

    def classify_stray(self, data: bytes) -> str:
        """Reason to refuse an update that arrives while no round accepts updates: the precise
        verification failure if it has one (revoked, forged, malformed...), else `no_open_round`."""
        try:
            package = decode(UpdatePackage, data)
            check_signature(package, self.kms, package.robot_id, (Role.ROBOT,))
        except VerificationError as exc:
            return exc.reason
        return 'no_open_round'

    def expected_robots(self) -> list[str]:
        """Enrolled robots that are not revoked (a round closes early once all of them sent)."""
        self.kms.refresh()
        return [r.metadata.key_id for r in self.kms.list_keys()
                if r.metadata.role == Role.ROBOT and not self.kms.is_revoked(r.metadata.key_id)]

    def ready_to_close(self, now: float | None = None) -> bool:
        """Quorum reached and either every enrolled robot sent or the deadline passed."""
        if self.current is None:
            return False
        count = len(self.current.contributors)
        now = time.time() if now is None else now
        everyone = set(self.expected_robots()) <= set(self.current.contributors)
        return count >= self.current.config.quorum and (everyone or now >= self.current.config.deadline)

    def expired(self, now: float | None = None) -> bool:
        """The deadline passed without quorum."""
        now = time.time() if now is None else now
        return (self.current is not None and now >= self.current.config.deadline
                and len(self.current.contributors) < self.current.config.quorum)

    def aggregate_request(self) -> bytes:
        """The signed manifest + summed bodies for the key service (revoked contributors dropped first)."""
        self.drop_revoked()
        config = self.current.config
        if len(self.current.contributors) < config.quorum:
            raise RoundError(f'round {config.round_id}: {len(self.current.contributors)} '
                             f'contributors left after revocations, quorum is {config.quorum}', reason='quorum_lost')
        return AggregateRequest(round_id=config.round_id, config_digest=config.config_digest(),
                                summed_bodies=self.current.body_sum.to_bytes(),
                                contributions=tuple(self.current.verifier.contributions()),
                                signer_key_id=AGGREGATOR_ID,
                                created_at=time.time()).signed_by(self.aggregator_identity).serialize()

    def candidate(self, result_blob: bytes) -> Candidate:
        """Check the key service's signed result and turn it into a candidate policy."""
        config = self.current.config
        try:
            result = decode(AggregateResult, result_blob)
            check_signature(result, self.kms, result.signer_key_id, (Role.KEY_SERVICE,))
        except VerificationError as exc:
            raise RoundError(f'aggregate result refused: {exc}', reason=exc.reason) from None
        if result.round_id != config.round_id or result.config_digest != config.config_digest():
            raise RoundError('aggregate result is bound to another round', reason='wrong_round')
        if sorted(result.contributors) != sorted(self.current.contributors):
            raise RoundError('the key service decrypted another set of robots', reason='contributors_mismatch')
        write_atomic(self.current.directory / 'aggregate.bin', result_blob)
        summed = update_codec.decode_aggregate(self.current.codec, result.aggregate)
        bound = plausible_sum_norm(self.current.codec, len(result.contributors))
        if self.current.site_sums and not np.linalg.norm(summed) <= bound:
            # A site's sum is not checked against its robots' bodies (docs/site-aggregation.md): a dropped
            # body decodes to noise over the whole range, a large shift beyond what clipped robots can send.
            raise RoundError(f'round {config.round_id}: the decoded sum has norm {np.linalg.norm(summed):.3g}, '
                             f'over the {bound:.3g} that {len(result.contributors)} clipped robots can reach; '
                             f'a site sum in it ({sorted(self.current.site_sums)}) is not what its robots sent',
                             reason=Reason.IMPLAUSIBLE_AGGREGATE)
        floor = segment_weight_floor(self.current.codec, len(result.contributors), self.settings.min_segment_weight)
        indices = adapter_round_coordinates(config.round_seed, self.model_policy, config.num_coordinates)
        policy, delta, frozen = apply_round_sum(self.model_policy, summed, floor, self.strategy,
                                                self.settings.server_learning_rate, indices)
        return Candidate(config.round_id, policy, tuple(result.contributors), float(np.linalg.norm(delta)), frozen)

    def close_round(self, outcome: dict) -> None:
        """Record the round's outcome and destroy its transport secret (and, with `delete_closed_updates`,
        its stored updates and site sums); the next round may open."""
        directory = self.current.directory
        write_atomic(directory / 'outcome.json', json.dumps(outcome, indent=2).encode())
        destroy_secret(directory / 'transport.sealed')
        self.current = None
        if self.settings.delete_closed_updates:
            for folder in ('updates', 'site_sums'):
                try:
                    shutil.rmtree(directory / folder)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self._problem(Reason.STORAGE_ERROR, f'round {directory.name}: {folder}/ not deleted: {exc}')
