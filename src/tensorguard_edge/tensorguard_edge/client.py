"""`EdgeClient`: everything a robot does for TensorGuard, without ROS.

The edge node only feeds it topics; tests and scripts drive it directly. It owns the robot's
state directory:

    <state_dir>/demos/          crash-safe demonstration store (tensorguard_learning)
    <state_dir>/model.tgm       the signed ModelPackage the robot runs (verified on load)
    <state_dir>/privacy.json    privacy ledger: rounds contributed and epsilon spent (hard stop)
    <state_dir>/residual.npy    error-feedback residual of coordinates not yet sent

One round (`process_round`): verify the server-signed RoundConfig against the pinned server keys;
check the round's key-service key is signed by the pinned key-service identity for exactly this
round; refuse stale, replayed, expired or over-budget rounds; train the adapter on the store; keep
the round's shared random-k coordinates (error feedback keeps the rest); clip, scale, round and add
Skellam noise (`tensorguard_crypto.skellam`); encrypt under a fresh per-round key whose key
ciphertext only the key service's round key opens (`tensorguard_crypto.secagg`); seal the bodies to
the aggregator's round transport key (`tensorguard_crypto.hybrid`); sign; return the `UpdatePackage`.
The privacy ledger is written before the package is returned, so a crash can only over-count spent
privacy, never under-count.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile, PrivacyBudget, PrivacyLedger
from tensorguard_crypto.hybrid import HybridError
from tensorguard_crypto.identity import Role
from tensorguard_crypto.keystore import load_key
from tensorguard_crypto.refusal import Refusal
from tensorguard_crypto.secagg import SecAggError
from tensorguard_crypto.verify import (
    PinnedKeys,
    VerificationError,
    verify_round_config,
    verify_round_key,
)
from tensorguard_crypto.wire import RoundConfigPackage, SafetyStats, UpdatePackage
from tensorguard_learning.aggregation import strategy_from_name
from tensorguard_learning.compression import ErrorFeedback, adapter_round_coordinates
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.deployment import ModelRefused as ModelRefused  # re-exported for the node
from tensorguard_learning.deployment import verify_deployed_model
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.errors import LearningError
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import TrainingBudget, train_local
from tensorguard_ros.config_fields import POSITIVE, RoundSettings, described


@dataclass
class EdgeSettings(RoundSettings):
    """Everything an edge node is configured with: the fleet's `RoundSettings` and the robot's own
    (each field becomes a ROS parameter)."""

    robot_id: str = described('Enrolled robot identity (KMS key id).', 'robot_1', read_only=True)
    state_dir: str = described('Directory for the store, model, privacy ledger and residual.', '', read_only=True)
    key_path: str = described('Encrypted Ed25519 identity key file (passphrase: TENSORGUARD_KEY_PASSPHRASE).', '',
                              read_only=True)
    trust_path: str = described('JSON file pinning the server keys this robot trusts.', '', read_only=True)
    state_dim: int = described('Length of observation.state.', 39, minimum=1, read_only=True)
    action_dim: int = described('Length of action.', 4, minimum=1, read_only=True)
    store_max_mb: int = described('Cap on the demonstration store (oldest episodes dropped beyond it).', 256,
                                  minimum=1, read_only=True)
    train_steps: int = described('Behaviour-cloning steps per round.', 200, minimum=1)
    train_max_seconds: float = described('Wall-clock cap on local training per round.', 60.0, minimum=POSITIVE)
    batch_size: int = described('Behaviour-cloning batch size.', 256, minimum=1)
    learning_rate: float = described('Adam learning rate of local training.', 1e-3, minimum=POSITIVE)
    trainable_modules: list[str] = described('Adapter modules this robot may train (OperatingEnvelope).',
                                             default_factory=lambda: ['experts', 'router'], read_only=True)
    max_trainable_params: int = described('OperatingEnvelope: most parameters local training may touch.', 5_000_000,
                                          minimum=1, read_only=True)
    target_update_size_kb: int = described('OperatingEnvelope: largest update package this robot sends.', 4096,
                                           minimum=1, read_only=True)
    epsilon_budget: float = described('Hard privacy budget of this robot (epsilon at privacy_delta); the default '
                                      '8 holds three rounds at the default noise_multiplier.', 8.0,
                                      minimum=POSITIVE, read_only=True)
    privacy_delta: float = described('delta of the (epsilon, delta) guarantee.', 1e-5, minimum=POSITIVE,
                                     maximum=1.0, read_only=True)
    hard_stop: bool = described('Refuse any round that would exceed epsilon_budget.', True, read_only=True)

def local_training(config: EdgeSettings) -> tuple[TrainingBudget, OperatingEnvelope]:
    """The training budget and operating envelope a robot's local training runs under."""
    envelope = OperatingEnvelope(
        trainable_modules=list(config.trainable_modules), max_trainable_params=config.max_trainable_params,
        target_update_size_kb=config.target_update_size_kb, round_interval_seconds=max(config.train_max_seconds, 1.0))
    budget = TrainingBudget(max_steps=config.train_steps, max_seconds=config.train_max_seconds,
                            batch_size=config.batch_size, learning_rate=config.learning_rate)
    return budget, envelope


class RoundRefused(Refusal):
    """The robot will not contribute to this round (raised with its reason)."""


@dataclass
class EdgeStatus:
    """A snapshot for RobotStatus and diagnostics."""

    episodes: int
    frames: int
    store_bytes: int
    model_version: int
    last_round_id: int
    last_update_bytes: int
    epsilon_spent: float
    epsilon_budget: float
    budget_exhausted: bool


@dataclass(frozen=True)
class TrustAnchors:
    """What a robot is provisioned with at enrolment: the public identity keys of the aggregator,
    the model server and the key service it trusts (the key service's signs each round's lattice
    key, so no aggregator can substitute its own)."""

    keys: PinnedKeys

    @classmethod
    def load(cls, path: str) -> TrustAnchors:
        """Read ``{"keys": {id: {"role", "public_key"}}}``."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(PinnedKeys({key_id: (Role(e['role']), bytes.fromhex(e['public_key']))
                                   for key_id, e in data['keys'].items()}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f'trust file {path!r} is unreadable or malformed ({type(exc).__name__})') from None


class EdgeClient:
    """One robot's store, model, privacy ledger and round pipeline (see module docstring)."""

    def __init__(self, config: EdgeSettings) -> None:
        if not config.state_dir or not config.key_path or not config.trust_path:
            raise ValueError('state_dir, key_path and trust_path must be set')
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_key(config.key_path)
        if self.identity.key_id != config.robot_id:
            raise ValueError(f'key file belongs to {self.identity.key_id!r}, not robot {config.robot_id!r}')
        self.trust = TrustAnchors.load(config.trust_path)
        self.store = DemonstrationStore(self.state_dir / 'demos', config.store_max_mb * 1024 * 1024)
        self.profile = DPProfile.from_fleet_parameters(asdict(config))
        self.privacy_budget = PrivacyBudget(epsilon=config.epsilon_budget, delta=config.privacy_delta,
                                            hard_stop=config.hard_stop)
        self.ledger_path = self.state_dir / 'privacy.json'
        self.ledger = (PrivacyLedger.from_dict(self.privacy_budget, json.loads(self.ledger_path.read_text()))
                       if self.ledger_path.exists() else PrivacyLedger(self.privacy_budget))
        self.retune(config)
        self.strategy = strategy_from_name(config.strategy)
        self.policy: MoEPolicy | None = None
        self.model_version = 0
        self.error_feedback: ErrorFeedback | None = None
        self.last_update_bytes = 0
        self._load_model()

    def retune(self, config: EdgeSettings) -> None:
        """Take the training parameters (steps, time, batch, learning rate) of `config` from the next round;
        everything else in it is read-only and so unchanged."""
        self.config = config
        self.budget, self.envelope = local_training(config)

    # Demonstrations.
    def add_demonstration(self, demo: Demonstration) -> int:
        """Store one completed episode durably; returns its index in the store."""
        if demo.observation_state.shape[1] != self.config.state_dim or demo.action.shape[1] != self.config.action_dim:
            raise ValueError(f'episode dims {demo.observation_state.shape[1]}/{demo.action.shape[1]} differ '
                             f'from this robot ({self.config.state_dim}/{self.config.action_dim})')
        try:
            return self.store.append_episode(demo)
        except LearningError as exc:
            raise ValueError(str(exc)) from exc

    # Models.
    def _model_path(self) -> Path:
        return self.state_dir / 'model.tgm'

    def _load_model(self) -> None:
        path = self._model_path()
        if path.exists():
            self._install_model(path.read_bytes(), current_version=None)

    def _install_model(self, blob: bytes, current_version: int | None) -> int:
        model = verify_deployed_model(blob, self.trust.keys, newest_version=current_version)
        self.policy, self.model_version = model.policy, model.version
        residual = self.state_dir / 'residual.npy'
        total = sum(model.policy.segment_sizes())
        self.error_feedback = ErrorFeedback(total)
        if residual.exists():
            saved = np.load(residual)
            if saved.shape == (total,):
                self.error_feedback.residual = saved
        return model.version

    def apply_model(self, blob: bytes) -> int:
        """Verify a server-signed ModelPackage that advances our version, persist it, run it."""
        version = self._install_model(blob, current_version=self.model_version)
        tmp = self._model_path().with_suffix('.tmp')
        tmp.write_bytes(blob)
        os.replace(tmp, self._model_path())
        return version

    # Rounds.
    def process_round(self, config_blob: bytes,
                      progress: Callable[[str], None] = lambda _activity: None) -> UpdatePackage:
        """Build this robot's signed, encrypted update for one round (see module docstring)."""
        try:
            cfg = verify_round_config(config_blob, self.trust.keys)
            round_key = verify_round_key(cfg, self.trust.keys)
        except VerificationError as exc:
            raise RoundRefused(str(exc), reason=exc.reason) from None
        self._check_round(cfg)
        indices = adapter_round_coordinates(cfg.round_seed, self.policy, cfg.num_coordinates)
        try:
            codec = update_codec.codec_for_round(cfg, self.profile,
                                                 self.strategy.vector_length(self.policy.segment_sizes(), indices),
                                                 self.config.max_clients)
        except (update_codec.RoundMismatch, ValueError) as exc:
            raise RoundRefused(str(exc), reason=update_codec.RoundMismatch.reason) from None
        epsilon_after = self.ledger.epsilon_after(codec.skellam)
        if self.config.hard_stop and epsilon_after > self.config.epsilon_budget:
            raise RoundRefused(f'round {cfg.round_id} would raise epsilon to '
                               f'{epsilon_after:.3f}, over the budget {self.config.epsilon_budget:.3f}',
                               reason='budget_exhausted')

        progress('training')
        global_segments = self.error_feedback.start_from(self.policy)
        try:
            update = train_local(self.policy, self.store, self.budget, self.envelope,
                                 modules=tuple(self.config.trainable_modules), reference=global_segments)
        finally:
            self.policy.load_segments(global_segments)
        values = self.error_feedback.compress(update.dense_delta(), indices)
        vector = self.strategy.flatten_update(update, values, indices)

        progress('encrypting')
        try:
            parts = update_codec.encrypt_update(
                codec, round_key.public_key, update_codec.body_seal_key(cfg, self.config.robot_id),
                update_codec.body_seal_context(self.config.robot_id, cfg.round_id, cfg.config_digest()), vector)
        except (SecAggError, HybridError) as exc:
            raise RoundRefused(f'round {cfg.round_id}: announced keys are unusable: {exc}',
                               reason='untrusted_round_key') from None
        package = UpdatePackage(
            robot_id=self.config.robot_id, round_id=cfg.round_id, round_seed=cfg.round_seed,
            config_digest=cfg.config_digest(), model_version=cfg.model_version, created_at=time.time(),
            body_chunks=parts.body_chunks, expert_metadata=(),
            # Only privacy accounting leaves the robot: the update's norm or the size of its data
            # would describe this robot outside the DP guarantee, so those fields stay zero.
            safety_stats=SafetyStats(dp_epsilon_consumed=epsilon_after, dp_delta=self.config.privacy_delta,
                                     clip_fraction=0.0, update_norm_before_clip=0.0, num_episodes=0,
                                     num_frames=0),
            bodies=parts.bodies, key_ciphertext=parts.key_ciphertext).signed_by(self.identity)
        size = len(package.serialize())
        try:
            self.envelope.check_update_size(size)
        except LearningError as exc:
            raise RoundRefused(str(exc), reason='update_too_large') from None
        # The spend is on disk before the package can leave: a crash over-counts, never under-counts.
        self.ledger.charge(str(cfg.round_id), codec.skellam)
        self._save_ledger()
        np.save(self.state_dir / 'residual.npy', self.error_feedback.residual)
        self.last_update_bytes = size
        progress('publishing')
        return package

    def _save_ledger(self) -> None:
        tmp = self.ledger_path.with_suffix('.tmp')
        tmp.write_text(json.dumps(self.ledger.to_dict()))
        os.replace(tmp, self.ledger_path)

    @property
    def last_round_id(self) -> int:
        """Newest round this robot contributed to (0: none)."""
        return max((int(r) for r in self.ledger.rounds), default=0)

    def _check_round(self, cfg: RoundConfigPackage) -> None:
        last = self.last_round_id
        if cfg.round_id == last:
            raise RoundRefused(f'round {cfg.round_id} already contributed', reason='already_contributed')
        if cfg.round_id < last:
            raise RoundRefused(f'round {cfg.round_id} is older than {last}', reason='replayed_round')
        if cfg.deadline < time.time():
            raise RoundRefused(f'round {cfg.round_id} closed already', reason='deadline_passed')
        if self.policy is None:
            raise RoundRefused('no verified model yet', reason='no_model')
        if cfg.model_version != self.model_version:
            raise RoundRefused(f'round trains model {cfg.model_version}, '
                               f'this robot runs {self.model_version}', reason='model_mismatch')
        if cfg.total_coordinates != sum(self.policy.segment_sizes()):
            raise RoundRefused('round coordinates do not match the model', reason='shape_mismatch')
        if cfg.aggregation_strategy != self.strategy.name:
            raise RoundRefused(f'round {cfg.round_id} announces aggregation strategy {cfg.aggregation_strategy}, '
                               f'this robot is configured for {self.strategy.name}',
                               reason=update_codec.RoundMismatch.reason)
        if cfg.security_level != self.config.security_level:
            raise RoundRefused(f'round {cfg.round_id} announces security level {cfg.security_level}, '
                               f'this robot is configured for {self.config.security_level}',
                               reason=update_codec.RoundMismatch.reason)
        if self.store.count() == 0:
            raise RoundRefused('the store holds no episodes yet', reason='no_demonstrations')

    def status(self) -> EdgeStatus:
        """Snapshot for status messages."""
        spent = self.ledger.epsilon()
        return EdgeStatus(
            episodes=self.store.count(), frames=self.store.total_frames(), store_bytes=self.store.size_bytes(),
            model_version=self.model_version, last_round_id=self.last_round_id,
            last_update_bytes=self.last_update_bytes, epsilon_spent=spent, epsilon_budget=self.config.epsilon_budget,
            budget_exhausted=self.config.hard_stop and spent >= self.config.epsilon_budget)

    def close(self) -> None:
        """Release the store."""
        self.store.close()


def create_client(config: EdgeSettings | None = None, **overrides) -> EdgeClient:
    """Build an `EdgeClient` from a config (or keyword overrides of the defaults), as in the brief."""
    return EdgeClient(dataclasses.replace(config or EdgeSettings(), **overrides))
