"""Verifying a deployed model before anything on a robot runs it: the one path for every consumer.

The edge client (which trains from the model) and the policy node (which drives the robot with it)
both call `verify_deployed_model`, so there is no second, weaker check. A model is accepted only if
its ModelPackage is signed by a server key among the robot's trust anchors (a package re-signed by
any other fleet's or an attacker's key is refused), it advances the newest version the caller
already holds (an older, replayed or rolled-back version is refused), its parameters load as a
policy (weights only, nothing executed), and, when the caller says so, its dimensions match the
robot's observation and action.

Rollback. When the gate rolls a canary back, the aggregator re-issues the parent model as a new
version whose ``gate_decision`` is ``rollback`` and whose ``parent_version`` is the canary it
replaces; `DeployedModel.rolled_back_version` names that canary, so a robot running it stops at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_crypto.verify import KeyResolver, VerificationError, verify_model_package
from tensorguard_crypto.wire import ModelPackage
from tensorguard_learning.errors import LearningError
from tensorguard_learning.policy import MoEPolicy

ROLLBACK = 'rollback'


class ModelRefused(Refusal):
    """A model package was not applied (raised with its reason)."""


@dataclass(frozen=True)
class DeployedModel:
    """A verified model: the signed package and the policy its parameters load into."""

    package: ModelPackage
    policy: MoEPolicy

    @property
    def version(self) -> int:
        """The package's model version."""
        return self.package.model_version

    @property
    def rolled_back_version(self) -> int | None:
        """The canary version this package rolls back (its parent), or None if it is no rollback."""
        return self.package.parent_version if self.package.gate_decision == ROLLBACK else None


def verify_deployed_model(blob: bytes, keys: KeyResolver, newest_version: int | None = None,
                          dims: tuple[int | None, int | None] = (None, None)) -> DeployedModel:
    """Verify a serialized ModelPackage against `keys` and return it with its loaded policy.

    `newest_version`: the newest model version the caller already holds (None: any version, e.g. the
    caller's own file at start-up); the same version again is refused as ``not_newer`` (a latched
    re-delivery, harmless), an older one as ``stale_model`` (a replay or a rolled-back version).
    `dims`: (observation, action) lengths the policy must have (None: any), else ``shape_mismatch``.
    Every refusal is a `ModelRefused` with the verification's reason.
    """
    try:
        package = verify_model_package(blob, keys)
    except VerificationError as exc:
        raise ModelRefused(str(exc), reason=exc.reason) from None
    if newest_version is not None and package.model_version == newest_version:
        raise ModelRefused(f'model version {package.model_version} is the one already held', reason=Reason.NOT_NEWER)
    if newest_version is not None and package.model_version < newest_version:
        raise ModelRefused(f'model version {package.model_version} is older than {newest_version} '
                           '(replayed or rolled back)', reason=Reason.STALE_MODEL)
    try:
        policy = MoEPolicy.from_bytes(package.parameters)
    except LearningError as exc:
        raise ModelRefused(f'parameters do not load: {exc}', reason=Reason.MALFORMED_MODEL) from None
    if any(want is not None and want != have for want, have in zip(dims, (policy.cfg.obs_dim, policy.cfg.action_dim))):
        raise ModelRefused(f'model {package.model_version} maps {policy.cfg.obs_dim} observation values to '
                           f'{policy.cfg.action_dim} actions; this robot has {dims[0]} and {dims[1]}',
                           reason=Reason.SHAPE_MISMATCH)
    return DeployedModel(package, policy)
