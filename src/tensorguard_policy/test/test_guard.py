"""ActionGuard and the envelope's commanding limits: whatever a model outputs (NaN and infinities
included), nothing outside the bounds or faster than the rate limit is ever commanded."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.errors import ConfigError, EnvelopeViolation
from tensorguard_policy.guard import ActionGuard, ActionRefused

sys.path.insert(0, str(Path(__file__).parent))
from policy_test_support import ENVELOPE  # noqa: E402

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
LIMIT = st.floats(min_value=-5, max_value=5, allow_nan=False)


@st.composite
def envelopes(draw):
    dim = draw(st.integers(1, 6))
    lows = [draw(LIMIT) for _ in range(dim)]
    highs = [low + draw(st.floats(0, 5)) for low in lows]
    safes = [low + draw(st.floats(0, 1)) * (high - low) for low, high in zip(lows, highs)]
    steps = [draw(st.floats(1e-3, 3)) for _ in range(dim)]
    return OperatingEnvelope(action_low=lows, action_high=highs, max_action_step=steps,
                             safe_action=[min(max(s, lo), hi) for s, lo, hi in zip(safes, lows, highs)])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), envelope=envelopes())
def test_commands_never_leave_the_bounds_or_the_rate_limit(data, envelope):
    guard = ActionGuard(envelope)
    low, high = np.array(envelope.action_low), np.array(envelope.action_high)
    step = np.array(envelope.max_action_step)
    previous = np.array(envelope.safe_action)
    for _ in range(data.draw(st.integers(1, 12))):
        if data.draw(st.booleans()):
            guard.reset()
            previous = np.array(envelope.safe_action)
        raw = np.array(data.draw(st.lists(ANY_FLOAT, min_size=envelope.action_dim, max_size=envelope.action_dim)))
        if not np.all(np.isfinite(raw)):
            with pytest.raises(ActionRefused) as refused:
                guard.apply(raw)
            assert refused.value.reason == 'malformed_model'
            continue
        command = guard.apply(raw)
        assert np.all(command >= low) and np.all(command <= high)
        assert np.all(np.abs(command - previous) <= step * (1 + 1e-12) + 1e-12)
        expected = np.clip(np.clip(raw, low, high), previous - step, previous + step)
        np.testing.assert_array_equal(command, expected)  # as close to the model as the limits allow
        previous = command


def test_a_refused_output_leaves_the_rate_limit_where_it_was():
    guard = ActionGuard(ENVELOPE)
    np.testing.assert_array_equal(guard.apply([1.0, -1.0, 0.1, 0.0]), [0.25, -0.25, 0.1, 0.0])
    with pytest.raises(ActionRefused):
        guard.apply([math.nan, 0.0, 0.0, 0.0])
    with pytest.raises(ActionRefused) as refused:
        guard.apply([0.0, 0.0, 0.0])
    assert refused.value.reason == 'shape_mismatch'
    np.testing.assert_array_equal(guard.apply([1.0, -1.0, 0.1, 0.0]), [0.5, -0.5, 0.1, 0.0])


def test_the_envelope_refuses_inconsistent_commanding_limits():
    good = dict(action_low=[-1.0], action_high=[1.0], max_action_step=[0.1], safe_action=[0.0])
    for bad, message in ((dict(safe_action=[2.0]), 'outside'), (dict(max_action_step=[0.0]), 'positive'),
                         (dict(action_high=[1.0, 1.0]), 'one value per action dimension'),
                         (dict(action_low=[math.nan]), 'finite'), (dict(watchdog_periods=0), 'watchdog')):
        with pytest.raises(ConfigError, match=message):
            OperatingEnvelope(**{**good, **bad})
    OperatingEnvelope(**good).check_commanding(1)
    with pytest.raises(EnvelopeViolation, match='limits 0 action dimensions'):
        OperatingEnvelope().check_commanding(4)
