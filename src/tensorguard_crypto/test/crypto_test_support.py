"""Shared helpers of the tensorguard_crypto tests: builders of realistic signed wire records and a
private SoftHSM2 token."""
import atexit
import functools
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tensorguard_crypto.identity import Identity
from tensorguard_crypto.wire import ExpertSlice, RoundConfigPackage, SafetyStats, UpdatePackage


def make_round_config(server: Identity, round_id: int = 7, **overrides) -> RoundConfigPackage:
    """A realistic signed round config (used by the other test modules too)."""
    fields = dict(round_id=round_id, round_seed=os.urandom(32), model_version=3, num_coordinates=4096,
                  total_coordinates=65536, num_experts=4, clipping_norm=1.0, noise_mu=25.0, scale=256.0,
                  plaintext_bits=20, min_clients=3, security_level=128, ring_degree=2048, modulus_bits=54,
                  deadline=time.time() + 3600, quorum=3, round_key=os.urandom(2048),
                  aggregator_transport_key=os.urandom(32),
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


SOFTHSM_MODULE_DEFAULT = Path('/usr/lib/softhsm/libsofthsm2.so')


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token initialised for this test process in a private configuration directory."""

    conf: Path
    module: Path
    label: str
    pin: str


def _softhsm_module() -> Path:
    if SOFTHSM_MODULE_DEFAULT.is_file():
        return SOFTHSM_MODULE_DEFAULT
    listing = subprocess.run(['dpkg', '-L', 'libsofthsm2'], capture_output=True, text=True).stdout.split()
    found = [Path(p) for p in listing if p.endswith('libsofthsm2.so')]
    if not found:
        pytest.fail('SoftHSM2 is not installed: run `apt-get install -y softhsm2` (listed in requirements/apt.txt; '
                    'scripts/bootstrap installs it)', pytrace=False)
    return found[0]


@functools.lru_cache(maxsize=1)
def softhsm_token() -> SoftHsmToken:
    """Initialise (once per process) a token with random PINs; SOFTHSM2_CONF is set for this process,
    because the PKCS#11 module reads it once when first loaded."""
    util = shutil.which('softhsm2-util')
    if util is None:
        pytest.fail('softhsm2-util not found: run `apt-get install -y softhsm2` (listed in requirements/apt.txt; '
                    'scripts/bootstrap installs it)', pytrace=False)
    module = _softhsm_module()
    root = Path(tempfile.mkdtemp(prefix='tg-softhsm-'))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / 'tokens').mkdir()
    conf = root / 'softhsm2.conf'
    conf.write_text(f'directories.tokendir = {root / "tokens"}\nobjectstore.backend = file\nlog.level = ERROR\n')
    label, pin = f'tg-{secrets.token_hex(4)}', secrets.token_hex(8)
    environment = {**os.environ, 'SOFTHSM2_CONF': str(conf)}
    subprocess.run([util, '--init-token', '--free', '--label', label, '--pin', pin,
                    '--so-pin', secrets.token_hex(8)], check=True, capture_output=True, env=environment)
    os.environ['SOFTHSM2_CONF'] = str(conf)
    return SoftHsmToken(conf=conf, module=module, label=label, pin=pin)
