"""The aggregator's round state machine (ROS-free): announce, verify, sum, close, publish.

The aggregator never holds a key that opens a robot's update: it verifies each signed package,
adds its bodies into a running sum and, at quorum, asks the key service to decrypt the sum of
exactly the accepted robots. Everything a restart must not lose is on disk before it is
acknowledged:

    <server>/rounds/<id>/config.bin        the signed RoundConfigPackage
    <server>/rounds/<id>/updates/<robot>   every accepted UpdatePackage, written atomically
    <server>/rounds/<id>/outcome.json      written when the round is closed (absent: still open)
    <server>/models/<version>.tgm          signed ModelPackages; the highest is current
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPPolicyProfile
from tensorguard_crypto.identity import Role
from tensorguard_crypto.kms import KeyManagementSystem
from tensorguard_crypto.secagg import SecAggError
from tensorguard_crypto.verify import (MalformedPackage, RoundVerifier, VerificationError, check_signature, decode,
                                       verify_model_package, verify_round_config)
from tensorguard_crypto.wire import (AggregateRequest, AggregateResult, ModelPackage, RoundConfigPackage,
                                     UpdatePackage, model_package)
from tensorguard_learning.aggregation import ExpertDrivenStrategy, apply_update
from tensorguard_learning.compression import adapter_round_coordinates
from tensorguard_learning.policy import MoEPolicy
from tensorguard_ros.config_fields import described

from tensorguard_aggregator.provisioning import (AGGREGATOR_ID, KEY_SERVICE_ID, SERVER_ID, FleetPaths,
                                                 load_server_identity)




@dataclass
class RoundPolicy:
    """How the aggregator runs rounds (each field becomes a ROS parameter)."""

    fleet_dir: str = described('Fleet directory holding server/ (see provisioning).', '')
    security_level: int = described('Lattice security level: 128, 192 or 256.', 128)
    plaintext_bits: int = described('Bits b of the summed integers.', 20)
    max_clients: int = described('Largest number of robots one round may sum.', 16)
    clipping_norm: float = described('DP: L2 norm each robot clips its update to.', 1.0)
    noise_multiplier: float = described('DP: noise std of the sum over min_clients robots / clipping_norm.', 1.0)
    min_clients: int = described('DP: noise is sized for a sum over at least this many robots.', 2)
    quorum: int = described('Distinct robots needed before an aggregate may be decrypted.', 2)
    coordinates_per_round: int = described(
        'k of shared random-k compression over expert coordinates; task segments are always sent '
        '(0: send every coordinate).', 0)
    round_deadline_s: float = described('Seconds a round collects updates.', 120.0)
    server_learning_rate: float = described('Scale applied to the aggregated delta.', 1.0)
    min_segment_weight: float = described(
        'An expert or task segment is updated only if the robots\' summed usage weight for it reaches '
        'this (in robot-equivalents) and SEGMENT_NOISE_MARGIN times the DP noise std of that sum.', 0.1)


# A segment's weighted mean is its decrypted sum divided by its decrypted weight; a weight within
# 10 noise standard deviations of zero would divide noise by noise, so such segments stay as they are.
SEGMENT_NOISE_MARGIN = 10.0


def segment_weight_floor(codec: update_codec.RoundCodec, contributors: int, min_segment_weight: float) -> float:
    """Smallest summed usage weight for which a segment is updated this round."""
    return max(min_segment_weight, SEGMENT_NOISE_MARGIN * codec.skellam.aggregate_stddev(contributors))


def apply_round_sum(model: MoEPolicy, summed: np.ndarray, floor: float, strategy: ExpertDrivenStrategy,
                    server_learning_rate: float, indices: np.ndarray | None = None
                    ) -> tuple[MoEPolicy, np.ndarray, int]:
    """The candidate a decoded round sum gives: (candidate, applied delta, frozen segment count).

    Segments whose summed weight is under `floor` stay as they are; the others move by their
    weighted mean delta, scaled by `server_learning_rate`.
    """
    summed = np.array(summed, dtype=np.float64)
    sizes = model.segment_sizes()
    weights = summed[len(summed) - len(sizes):]
    frozen = int(np.count_nonzero(weights < floor))
    weights[weights < floor] = 0.0
    delta = strategy.finalize(summed, sizes, indices)
    candidate = model.clone()
    apply_update(candidate, delta, server_learning_rate)
    return candidate, delta, frozen


class RoundError(Exception):
    """A round cannot proceed; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class Candidate:
    """A decrypted, decoded round result applied to the current model."""

    round_id: int
    policy: MoEPolicy
    contributors: tuple[str, ...]
    delta_norm: float
    frozen_segments: int


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OpenRound:
    """One round being collected: its signed config, verifier and running body sum."""

    def __init__(self, directory: Path, config: RoundConfigPackage, codec: update_codec.RoundCodec,
                 verifier: RoundVerifier) -> None:
        self.directory = directory
        self.config = config
        self.codec = codec
        self.verifier = verifier
        self.body_sum = update_codec.BodySum(codec)

    @property
    def contributors(self) -> list[str]:
        """Robots whose updates were accepted, in order of arrival."""
        return [c.robot_id for c in self.verifier.contributions()]


class Aggregator:
    """Round state machine of the fleet server (see module docstring)."""

    def __init__(self, policy: RoundPolicy, passphrase: bytes) -> None:
        self.policy = policy
        self.paths = FleetPaths(Path(policy.fleet_dir))
        self.kms: KeyManagementSystem = self.paths.kms()
        self.aggregator_identity = load_server_identity(self.paths, AGGREGATOR_ID, passphrase)
        self.server_identity = load_server_identity(self.paths, SERVER_ID, passphrase)
        self.key_service_public_key = self.paths.lattice_public.read_bytes()
        self.profile = DPPolicyProfile(clipping_norm=policy.clipping_norm, epsilon_budget=1.0,
                                       noise_multiplier=policy.noise_multiplier, min_clients=policy.min_clients,
                                       bits=policy.plaintext_bits)
        self.strategy = ExpertDrivenStrategy(quorum_threshold=policy.quorum)
        self.rounds_dir = self.paths.server / 'rounds'
        self.models_dir = self.paths.server / 'models'
        self.current: OpenRound | None = None
        self.model: ModelPackage | None = None
        self.model_policy: MoEPolicy | None = None
        self._load_latest_model()
        self._resume_open_round()

    # Models.
    def _load_latest_model(self) -> None:
        versions = sorted(int(p.stem) for p in self.models_dir.glob('*.tgm')) if self.models_dir.exists() else []
        if versions:
            blob = (self.models_dir / f'{versions[-1]}.tgm').read_bytes()
            self.model = verify_model_package(blob, self.kms)
            self.model_policy = MoEPolicy.from_bytes(self.model.parameters)

    def publish_model(self, policy: MoEPolicy, round_id: int, decision: str) -> ModelPackage:
        """Sign and persist a new model version derived from the current one."""
        parent = self.model.model_version if self.model else 0
        package = model_package(model_version=parent + 1, parent_version=parent, round_id=round_id,
                                parameters=policy.state_bytes(), gate_decision=decision,
                                signer_key_id=SERVER_ID, created_at=time.time()).signed_by(self.server_identity)
        _write_atomic(self.models_dir / f'{package.model_version}.tgm', package.serialize())
        self.model, self.model_policy = package, policy
        return package

    # Rounds.
    def _round_ids(self) -> list[int]:
        if not self.rounds_dir.exists():
            return []
        return sorted(int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit())

    def _codec(self, round_seed: bytes) -> update_codec.RoundCodec:
        indices = adapter_round_coordinates(round_seed, self.model_policy, self._num_coordinates())
        dim = indices.size + len(self.model_policy.segment_sizes())
        return update_codec.build_codec(self.profile, dim, self.policy.max_clients, self.policy.security_level,
                                        round_seed)

    def _num_coordinates(self) -> int:
        total = sum(self.model_policy.segment_sizes())
        k = self.policy.coordinates_per_round
        return total if k <= 0 else min(k, total)

    def _verifier(self, config: RoundConfigPackage, codec: update_codec.RoundCodec, clock) -> RoundVerifier:
        return RoundVerifier(self.kms, config, expected_bodies_bytes=codec.body_bytes,
                             expected_key_ciphertext_bytes=codec.key_ciphertext_bytes, clock=clock)

    def open_round(self, deadline_s: float | None = None, quorum: int | None = None) -> RoundConfigPackage:
        """Announce a new round with a fresh seed from the OS CSPRNG; persisted before it is returned."""
        if self.current is not None:
            raise RoundError('round_open', f'round {self.current.config.round_id} is still open')
        if self.model is None:
            raise RoundError('no_model', 'no initial model: provision one first')
        ids = self._round_ids()
        round_id = (ids[-1] + 1) if ids else 1
        seed = secrets.token_bytes(32)
        codec = self._codec(seed)
        now = time.time()
        config = RoundConfigPackage(
            round_id=round_id, round_seed=seed, model_version=self.model.model_version,
            num_coordinates=self._num_coordinates(), total_coordinates=sum(self.model_policy.segment_sizes()),
            num_experts=self.model_policy.cfg.num_experts,
            deadline=now + (deadline_s or self.policy.round_deadline_s), quorum=quorum or self.policy.quorum,
            key_service_public_key=self.key_service_public_key, key_service_key_id=KEY_SERVICE_ID,
            aggregator_key_id=AGGREGATOR_ID, signer_key_id=AGGREGATOR_ID, created_at=now,
            **update_codec.announce(codec)).signed_by(self.aggregator_identity)
        directory = self.rounds_dir / str(round_id)
        _write_atomic(directory / 'config.bin', config.serialize())
        self.current = OpenRound(directory, config, codec, self._verifier(config, codec, time.time))
        return config

    def _resume_open_round(self) -> None:
        ids = self._round_ids()
        if not ids or (self.rounds_dir / str(ids[-1]) / 'outcome.json').exists() or self.model is None:
            return
        directory = self.rounds_dir / str(ids[-1])
        config = verify_round_config((directory / 'config.bin').read_bytes(), self.kms)
        codec = self._codec(config.round_seed)
        # Updates on disk were accepted before their deadline; re-verify everything but the clock.
        self.current = OpenRound(directory, config, codec, self._verifier(config, codec, None))
        for path in sorted((directory / 'updates').glob('*.tgu')):
            package = self.current.verifier.verify(path.read_bytes())
            self.current.body_sum.add(self.current.body_sum.parse(package.bodies))
        self.current.verifier.clock = time.time

    def accept(self, data: bytes) -> UpdatePackage:
        """Verify one update and add its bodies; raises `VerificationError` (with a reason) otherwise."""
        if self.current is None:
            raise RoundError('no_open_round', 'no round is open')
        try:
            body = self.current.body_sum.parse(decode(UpdatePackage, data).bodies)
        except SecAggError as exc:
            raise MalformedPackage(f'bodies do not parse: {exc}', 'malformed_bodies') from None
        package = self.current.verifier.verify(data)
        _write_atomic(self.current.directory / 'updates' / f'{package.robot_id}.tgu', data)
        self.current.body_sum.add(body)
        return package

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
        """The signed manifest + summed bodies for the key service."""
        config = self.current.config
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
            raise RoundError(exc.reason, f'aggregate result refused: {exc}') from None
        if result.round_id != config.round_id or result.config_digest != config.config_digest():
            raise RoundError('wrong_round', 'aggregate result is bound to another round')
        if sorted(result.contributors) != sorted(self.current.contributors):
            raise RoundError('contributors_mismatch', 'the key service decrypted another set of robots')
        summed = update_codec.decode_aggregate(self.current.codec, result.aggregate)
        floor = segment_weight_floor(self.current.codec, len(result.contributors), self.policy.min_segment_weight)
        indices = adapter_round_coordinates(config.round_seed, self.model_policy, config.num_coordinates)
        policy, delta, frozen = apply_round_sum(self.model_policy, summed, floor, self.strategy,
                                                self.policy.server_learning_rate, indices)
        return Candidate(config.round_id, policy, tuple(result.contributors), float(np.linalg.norm(delta)), frozen)

    def close_round(self, outcome: dict) -> None:
        """Record the round's outcome; the next round may open."""
        _write_atomic(self.current.directory / 'outcome.json', json.dumps(outcome, indent=2).encode())
        self.current = None
