"""Builders of realistic signed wire records shared by the tensorguard_crypto tests."""
import os
import time

from tensorguard_crypto.identity import Identity
from tensorguard_crypto.wire import ExpertSlice, RoundConfigPackage, SafetyStats, UpdatePackage


def make_round_config(server: Identity, round_id: int = 7, **overrides) -> RoundConfigPackage:
    """A realistic signed round config (used by the other test modules too)."""
    fields = dict(round_id=round_id, round_seed=os.urandom(32), model_version=3, num_coordinates=4096,
                  total_coordinates=65536, num_experts=4, clipping_norm=1.0, noise_mu=25.0, scale=256.0,
                  plaintext_bits=20, min_clients=3, security_level=128, ring_degree=2048, modulus_bits=54,
                  deadline=time.time() + 3600, quorum=3, key_service_public_key=os.urandom(2048),
                  key_service_key_id='key_service', aggregator_key_id='aggregator', signer_key_id=server.key_id,
                  created_at=time.time())
    fields.update(overrides)
    return RoundConfigPackage(**fields).signed_by(server)


def make_update(robot: Identity, config: RoundConfigPackage, bodies_bytes: int = 1500, **overrides) -> UpdatePackage:
    """A signed update bound to `config` with random opaque ciphertext bytes."""
    fields = dict(robot_id=robot.key_id, round_id=config.round_id, round_seed=config.round_seed,
                  config_digest=config.config_digest(), model_version=config.model_version,
                  created_at=time.time(), body_chunks=2,
                  expert_metadata=(ExpertSlice(expert_id=0, num_coordinates=2048, offset=0),
                                   ExpertSlice(expert_id=3, num_coordinates=2048, offset=2048)),
                  safety_stats=SafetyStats(dp_epsilon_consumed=0.37, dp_delta=1e-6, clip_fraction=0.25,
                                           update_norm_before_clip=3.5, num_episodes=12, num_frames=2400),
                  bodies=os.urandom(bodies_bytes), key_ciphertext=os.urandom(600))
    fields.update(overrides)
    return UpdatePackage(**fields).signed_by(robot)
