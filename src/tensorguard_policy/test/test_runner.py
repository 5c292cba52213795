"""PolicyController: only verified models run, models switch only between episodes, a rolled-back
model stops at once, the human switch and the watchdog stop commanding with one safe action."""
import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.wire import ModelPackage
from tensorguard_learning.deployment import ModelRefused
from tensorguard_policy.runner import PolicyController

sys.path.insert(0, str(Path(__file__).parent))
from policy_test_support import ENVELOPE, TRUST, signed_model, small_policy  # noqa: E402

PERIOD = 0.05
OBS = np.linspace(-1, 1, 39, dtype=np.float32)
SAFE = np.zeros(4)


def controller(version: int = 1) -> PolicyController:
    c = PolicyController(TRUST, 'robot_1', ENVELOPE, PERIOD, state_dim=39)
    c.offer_model(signed_model(version), [])
    c.set_enabled(True)
    return c


def drive(c: PolicyController, t: float, age: float = 0.0):
    """One control tick at `t` seconds with an observation stamped `age` seconds earlier."""
    return c.tick(round(t * 1e9), (round((t - age) * 1e9), OBS))


def expected_action(version: int, task: str = 'push-v3') -> np.ndarray:
    raw = small_policy(version).act(OBS[None, :], task)[0]
    return np.clip(np.clip(raw, -1, 1), -0.25, 0.25)  # first command: rate-limited from the safe action


def test_the_verified_model_drives_an_autonomous_episode_only():
    c = controller()
    assert drive(c, 0.0) is None and c.mode() == 'idle'
    c.start_episode(0, 'push-v3', autonomous=False)  # a human demonstration: never driven
    assert drive(c, 0.05) is None
    c.end_episode()
    c.start_episode(1, 'push-v3', autonomous=True)
    np.testing.assert_allclose(drive(c, 0.10), expected_action(1), rtol=1e-6)
    c.start_episode(2, 'reach-v3', autonomous=True)  # a task the model does not have
    np.testing.assert_array_equal(drive(c, 0.15), SAFE)
    assert c.mode() == 'unknown_task' and drive(c, 0.20) is None


@pytest.mark.parametrize('attack', ['forged', 'foreign_key', 'replayed', 'rolled_back'])
def test_a_model_that_does_not_verify_is_never_run(attack):
    c = controller(version=3)
    if attack == 'forged':
        evil = small_policy(99).state_bytes()  # other weights under the server's signature of model 4
        blob = dataclasses.replace(ModelPackage.deserialize(signed_model(4)), parameters=evil,
                                   parameters_sha256=hashlib.sha256(evil).digest()).serialize()
        reason = 'bad_signature'
    elif attack == 'foreign_key':
        blob, reason = signed_model(4, signer=Identity.generate('server', Role.SERVER)), 'bad_signature'
    elif attack == 'replayed':
        blob, reason = signed_model(2), 'stale_model'
    else:  # the canary 4 was rolled back by 5 (its parent re-issued); 4 is replayed afterwards
        c.offer_model(signed_model(5, 'rollback', policy=small_policy(3)), [])
        blob, reason = signed_model(4, 'canary'), 'stale_model'
    running = c.status().model_version
    with pytest.raises(ModelRefused) as refused:
        c.offer_model(blob, [])
    assert refused.value.reason == reason
    c.start_episode(0, 'push-v3', autonomous=True)
    np.testing.assert_allclose(drive(c, 0.0), expected_action(3), rtol=1e-6)
    assert c.status().model_version == running and c.status().pending_version == 0


def test_a_new_model_takes_over_only_when_the_episode_ends():
    c = controller(version=1)
    c.start_episode(0, 'push-v3', autonomous=True)
    first = drive(c, 0.0)
    assert c.offer_model(signed_model(2), []).version == 2
    assert c.status().model_version == 1 and c.status().pending_version == 2
    for i in range(1, 5):  # the rest of the episode: still model 1
        assert c.status().model_version == 1
        assert drive(c, i * PERIOD) is not None
    np.testing.assert_allclose(first, expected_action(1), rtol=1e-6)
    c.end_episode()
    assert c.status().model_version == 2 and c.status().pending_version == 0
    assert c.offer_model(signed_model(3), ['robot_7']) is None  # a canary for another robot
    c.start_episode(1, 'push-v3', autonomous=True)
    np.testing.assert_allclose(drive(c, 1.0), expected_action(2), rtol=1e-6)
    assert c.status().model_version == 2


def test_a_rollback_of_the_running_model_stops_it_at_once():
    c = controller(version=1)
    c.offer_model(signed_model(2, 'canary'), ['robot_1'])
    c.start_episode(0, 'push-v3', autonomous=True)
    assert drive(c, 0.0) is not None
    c.offer_model(signed_model(3, 'rollback', policy=small_policy(1)), [])
    np.testing.assert_array_equal(drive(c, 0.05), SAFE)
    assert c.mode() == 'rolled_back' and drive(c, 0.10) is None and c.status().model_version == 2
    c.end_episode()
    c.start_episode(1, 'push-v3', autonomous=True)
    np.testing.assert_allclose(drive(c, 0.15), expected_action(1), rtol=1e-6)
    assert c.status().model_version == 3


def test_the_watchdog_and_the_human_switch_send_the_safe_action_once_then_nothing():
    c = controller()
    c.start_episode(0, 'push-v3', autonomous=True)
    assert drive(c, 0.0) is not None
    assert drive(c, 0.05, age=0.05) is not None and drive(c, 0.10, age=0.10) is not None  # 2 periods: fresh
    np.testing.assert_array_equal(drive(c, 0.15, age=0.101), SAFE)  # older than 2 periods
    assert drive(c, 0.20, age=0.15) is None and c.status().watchdog_stops == 1
    assert c.status().mode == 'stale_observation'
    assert drive(c, 0.25) is not None  # a fresh observation: driving again
    np.testing.assert_array_equal(drive(c, 0.30, age=-0.2), SAFE)  # stamped in the future: not trusted either
    assert drive(c, 0.35) is not None
    c.set_enabled(False)
    np.testing.assert_array_equal(drive(c, 0.40), SAFE)
    assert drive(c, 0.45) is None and c.mode() == 'disabled'
    assert c.status().watchdog_stops == 2
