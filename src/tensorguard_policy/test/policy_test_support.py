"""Shared test helpers: a fleet server key the robot trusts, signed models of a small real policy, an envelope."""
import torch

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.verify import PinnedKeys
from tensorguard_crypto.wire import model_package
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.policy import MoEConfig, build_policy

torch.set_num_threads(1)
TASKS = ('push-v3', 'door-open-v3')
SERVER = Identity.generate('server', Role.SERVER)
TRUST = PinnedKeys({'server': (Role.SERVER, SERVER.public_key_bytes())})
# Commanding limits of a 4-dimensional Meta-World-like arm.
ENVELOPE = OperatingEnvelope(action_low=(-1.0,) * 4, action_high=(1.0,) * 4, max_action_step=(0.25,) * 4,
                             safe_action=(0.0,) * 4)


def small_policy(seed: int = 0):
    """A small MoE policy over TASKS (39 -> 4), different weights per seed."""
    return build_policy(MoEConfig(tasks=TASKS, expert_hidden=16, base_hidden=32, feature_dim=32, num_experts=2,
                                  top_k=1, init_seed=seed))


def signed_model(version: int, decision: str = 'deploy', signer: Identity = SERVER, policy=None) -> bytes:
    """Serialized ModelPackage as the aggregator publishes it (parent = version - 1), of `policy`
    or of `small_policy(version)`."""
    policy = small_policy(version) if policy is None else policy
    return model_package(model_version=version, parent_version=version - 1, round_id=version,
                         parameters=policy.state_bytes(), gate_decision=decision, signer_key_id=signer.key_id,
                         created_at=1.0).signed_by(signer).serialize()
