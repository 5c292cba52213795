"""Tests for the Skellam RDP accountant and the per-robot budget ledger."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_crypto.accountant import (
    RDP_ORDERS,
    AccountantError,
    DPProfile,
    PrivacyBudget,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    epsilon_after_rounds,
    rdp_to_epsilon,
    round_rdp,
    skellam_rdp,
    smallest_noise_multiplier,
)


def test_skellam_rdp_by_hand_small_correction_branch():
    # alpha = 2, D2 = 2, D1 = 4, mu = 100:
    #   alpha D2^2 / (2 mu)                 = 2 * 4 / 200            = 0.04
    #   ((2 alpha - 1) D2^2 + 6 D1)/(4 mu^2) = (3 * 4 + 24) / 40000   = 0.0009
    #   3 D1 / (2 mu)                        = 12 / 200               = 0.06
    #   eps(2) = 0.04 + min(0.0009, 0.06)                            = 0.0409
    assert skellam_rdp([2], 2.0, 4.0, 100.0)[0] == pytest.approx(0.0409, abs=1e-12)


def test_skellam_rdp_by_hand_linear_branch():
    # alpha = 3, D2 = 2, D1 = 4, mu = 1: 3 * 4 / 2 = 6; min((5 * 4 + 24) / 4 = 11, 3 * 4 / 2 = 6) = 6 -> 12
    assert skellam_rdp([3], 2.0, 4.0, 1.0)[0] == pytest.approx(12.0, abs=1e-12)


def test_conversion_by_hand():
    # CKS20 Prop. 12 at alpha = 2, delta = 1e-5, eps(2) = 0.0409:
    #   0.0409 + ln(1 - 1/2) - (ln 1e-5 + ln 2) / 1 = 0.0409 - 0.693147 + 11.512925 - 0.693147 = 10.167531
    eps, order = rdp_to_epsilon([2], np.array([0.0409]), 1e-5)
    assert order == 2 and eps == pytest.approx(10.167531, abs=1e-6)
    # alpha = 11: eps(11) = 11 * 4 / 200 + min((21 * 4 + 24) / 40000, 12 / 200) = 0.22 + 0.0027 = 0.2227;
    #   0.2227 + ln(10/11) - (ln 1e-5 + ln 11) / 10 = 0.2227 - 0.095310 + 1.151293 - 0.239790 = 1.038893
    rdp = skellam_rdp([2, 11], 2.0, 4.0, 100.0)
    assert rdp[1] == pytest.approx(0.2227, abs=1e-12)
    eps, order = rdp_to_epsilon([2, 11], rdp, 1e-5)
    assert order == 11 and eps == pytest.approx(1.038893, abs=1e-6)


def test_large_noise_matches_gaussian_rdp():
    # for mu >> D2^2 the correction vanishes and eps(alpha) -> alpha D2^2 / (2 mu), the Gaussian RDP
    rdp = skellam_rdp(RDP_ORDERS, 100.0, 1000.0, 1e8)
    gaussian = np.asarray(RDP_ORDERS) * 100.0**2 / (2 * 1e8)
    assert np.allclose(rdp, gaussian, rtol=1e-3)


def profile(**overrides) -> DPProfile:
    base = dict(clipping_norm=1.0, noise_multiplier=1.0, min_clients=16, bits=20)
    base.update(overrides)
    return DPProfile(**base)


def test_round_uses_sensitivity_after_rounding():
    cfg = profile().skellam_config(dim=1000, max_clients=100)
    c, d = cfg.scale * cfg.clipping_norm, cfg.padded_dim
    expected_l2 = math.sqrt(c * c + d / 4 + math.sqrt(2 * math.log(1 / cfg.beta)) * (c + math.sqrt(d) / 2))
    assert cfg.l2_sensitivity == pytest.approx(expected_l2)
    assert cfg.l2_sensitivity > c
    assert cfg.l1_sensitivity == pytest.approx(min(math.sqrt(d) * expected_l2, expected_l2**2))
    assert round_rdp(cfg)[0] == pytest.approx(skellam_rdp([2], expected_l2, cfg.l1_sensitivity,
                                                          cfg.aggregate_variance)[0])


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    cfg = profile().skellam_config(dim=4096, max_clients=100)
    ledger = PrivacyLedger(PrivacyBudget(epsilon=1e6))
    spent = [ledger.charge(f'r{i}', cfg) for i in range(5)]
    assert all(a < b for a, b in zip(spent, spent[1:]))
    assert ledger.epsilon() == pytest.approx(spent[-1])
    noisier = profile(noise_multiplier=2.0).skellam_config(dim=4096, max_clients=100)
    quieter = profile(noise_multiplier=0.5).skellam_config(dim=4096, max_clients=100)
    eps = [rdp_to_epsilon(RDP_ORDERS, round_rdp(c), 1e-5)[0] for c in (quieter, cfg, noisier)]
    assert eps[0] > eps[1] > eps[2]
    # z = 1, one round, delta = 1e-5: Gaussian mechanism value (RDP alpha / 2, CKS conversion) is ~4.75
    assert 4.5 < eps[1] < 5.2


def test_hard_stop_refuses_the_round_that_would_exceed():
    cfg = profile().skellam_config(dim=4096, max_clients=100)
    probe = PrivacyLedger(PrivacyBudget(epsilon=1e6))
    probe.charge('a', cfg)
    two_rounds = probe.charge('b', cfg)
    ledger = PrivacyLedger(PrivacyBudget(epsilon=two_rounds + 1e-9))
    ledger.charge('a', cfg)
    ledger.charge('b', cfg)
    with pytest.raises(PrivacyBudgetExceeded, match='over the budget'):
        ledger.charge('c', cfg)
    assert ledger.rounds == ['a', 'b'] and ledger.epsilon() == pytest.approx(two_rounds)
    assert not ledger.exceeded()


def test_without_hard_stop_rounds_are_recorded_and_flagged():
    cfg = profile().skellam_config(dim=4096, max_clients=100)
    ledger = PrivacyLedger(PrivacyBudget(epsilon=1.0, hard_stop=False))
    ledger.charge('a', cfg)
    assert ledger.exceeded()


def test_ledger_persists_and_rejects_bad_input():
    cfg = profile().skellam_config(dim=100, max_clients=20)
    ledger = PrivacyLedger(PrivacyBudget(epsilon=100.0))
    ledger.charge('r1', cfg)
    restored = PrivacyLedger.from_dict(ledger.budget, ledger.to_dict())
    assert restored.epsilon() == pytest.approx(ledger.epsilon()) and restored.rounds == ['r1']
    with pytest.raises(AccountantError, match='already charged'):
        ledger.charge('r1', cfg)
    with pytest.raises(AccountantError, match='invalid ledger'):
        PrivacyLedger.from_dict(ledger.budget, {'orders': [2]})
    with pytest.raises(AccountantError, match='epsilon budget'):
        PrivacyBudget(epsilon=0.0)
    with pytest.raises(AccountantError, match='delta'):
        PrivacyBudget(epsilon=1.0, delta=1.0)
    with pytest.raises(AccountantError, match='clipping_norm'):
        profile(clipping_norm=0.0)
    with pytest.raises(AccountantError, match='min_clients'):
        profile(min_clients=0)
    with pytest.raises(AccountantError, match='orders'):
        skellam_rdp([1], 1.0, 1.0, 1.0)
    with pytest.raises(AccountantError, match='delta'):
        rdp_to_epsilon([2], np.array([0.1]), 0.0)


@settings(max_examples=25, deadline=None)
@given(budget=st.floats(min_value=0.5, max_value=50.0), rounds=st.integers(min_value=1, max_value=12),
       clients=st.sampled_from([4, 100, 1000]))
def test_smallest_noise_multiplier_is_the_least_noise_the_ledger_lets_through(budget, rounds, clients):
    # The calibrated multiplier is useful only if the robots' own hard stop agrees with it: `rounds`
    # rounds at it are all accepted, and one grid step less noise is refused in the last round.
    base, dim = profile(min_clients=clients), 3000
    multiplier = smallest_noise_multiplier(base, dim, clients, rounds, budget, 1e-5)
    assert multiplier == pytest.approx(round(multiplier / 0.01) * 0.01) and multiplier > 0

    def ledger_at(noise_multiplier):
        ledger = PrivacyLedger(PrivacyBudget(epsilon=budget))
        config = profile(min_clients=clients, noise_multiplier=noise_multiplier).skellam_config(dim, clients)
        return ledger, config

    ledger, config = ledger_at(multiplier)
    for r in range(rounds):
        ledger.charge(f'r{r}', config)
    assert ledger.epsilon() == epsilon_after_rounds(config, rounds, 1e-5) <= budget
    if multiplier > 0.01:
        ledger, config = ledger_at(round(multiplier - 0.01, 12))
        with pytest.raises(PrivacyBudgetExceeded):
            for r in range(rounds):
                ledger.charge(f'r{r}', config)


def test_smallest_noise_multiplier_refuses_budgets_it_cannot_meet():
    with pytest.raises(AccountantError, match='positive and finite'):
        smallest_noise_multiplier(profile(), 3000, 16, 3, 0.0, 1e-5)
    with pytest.raises(AccountantError, match='positive and finite'):
        smallest_noise_multiplier(profile(), 3000, 16, 3, math.nan, 1e-5)
    with pytest.raises(AccountantError, match='resolution'):
        smallest_noise_multiplier(profile(), 3000, 16, 3, 8.0, 1e-5, resolution=0.0)
    with pytest.raises(AccountantError, match='rounds must be at least 1'):
        smallest_noise_multiplier(profile(), 3000, 16, 0, 8.0, 1e-5)
    # below the delta term's floor: no amount of noise gets epsilon this small
    with pytest.raises(AccountantError, match='no noise multiplier up to 1e6'):
        smallest_noise_multiplier(profile(), 3000, 16, 3, 1e-9, 1e-5)
