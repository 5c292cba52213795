"""Per-robot privacy accounting for the distributed Skellam mechanism, with a hard budget stop.

Per round (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021, arXiv:2110.04995, the multi-dimensional Skellam RDP bound, cited as
Theorem 3.5 / Corollary 3.6 depending on the version):
adding Skellam noise of variance mu per coordinate to an integer query with L1 sensitivity D1
and L2 sensitivity D2 is (alpha, eps(alpha))-RDP for integer alpha > 1 with

    eps(alpha) = alpha D2^2 / (2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu) ).

Here D2 is the conditional-rounding bound on one robot's scaled contribution, D1 the matching
integer-vector bound and mu the aggregate variance over `min_clients` honest robots (see
`skellam.SkellamConfig`). Neighbouring inputs differ in one robot's contribution being zeroed
out (add/remove user-level adjacency, with the robot's noise share still present), so the sum
moves by at most that contribution, whose norms D2 and D1 bound; replace-one adjacency would
double both. Rounds compose by adding RDP (Mironov, "Renyi
Differential Privacy", CSF 2017, Proposition 1). Conversion to (epsilon, delta) uses Canonne,
Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Proposition 12:

    epsilon = min_alpha [ eps_total(alpha) + log(1 - 1/alpha) - (log(delta) + log(alpha)) / (alpha - 1) ].
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .skellam import SkellamConfig

RDP_ORDERS: tuple[int, ...] = tuple(range(2, 129)) + (160, 192, 256, 384, 512, 768, 1024)
"""Integer Renyi orders evaluated (the Skellam bound is stated for integer alpha > 1)."""


class AccountantError(ValueError):
    """Raised for invalid accounting inputs."""


class PrivacyBudgetExceeded(RuntimeError):
    """Raised by the hard stop: the requested round would push epsilon past the budget."""


def skellam_rdp(orders: Sequence[int], l2_sensitivity: float, l1_sensitivity: float,
                variance: float) -> np.ndarray:
    """Skellam RDP eps(alpha) per order for one release (Agarwal-Kairouz-Liu 2021, formula above)."""
    if variance <= 0 or l2_sensitivity < 0 or l1_sensitivity < 0:
        raise AccountantError('variance must be positive and sensitivities non-negative')
    alpha = np.asarray(orders, dtype=np.float64)
    if np.any(alpha <= 1) or np.any(alpha != np.floor(alpha)):
        raise AccountantError('orders must be integers greater than 1')
    d1, d2sq, mu = l1_sensitivity, l2_sensitivity**2, variance
    return alpha * d2sq / (2 * mu) + np.minimum(((2 * alpha - 1) * d2sq + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))


def rdp_to_epsilon(orders: Sequence[int], rdp: np.ndarray, delta: float) -> tuple[float, int]:
    """(epsilon, best order) from an RDP curve (Canonne-Kamath-Steinke 2020, Proposition 12)."""
    if not 0 < delta < 1:
        raise AccountantError(f'delta must be in (0, 1), got {delta}')
    alpha = np.asarray(orders, dtype=np.float64)
    eps = np.asarray(rdp) + np.log1p(-1 / alpha) - (math.log(delta) + np.log(alpha)) / (alpha - 1)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), int(orders[best])


def round_rdp(config: SkellamConfig, orders: Sequence[int] = RDP_ORDERS) -> np.ndarray:
    """RDP curve of one round encoded with `config`, for one robot."""
    return skellam_rdp(orders, config.l2_sensitivity, config.l1_sensitivity, config.aggregate_variance)


@dataclass(frozen=True)
class DPProfile:
    """The fleet-wide DP mechanism every robot and the server agree on: clipping, noise and encoding."""

    clipping_norm: float
    noise_multiplier: float = 1.0
    min_clients: int = 2
    bits: int = 20
    beta: float = math.exp(-0.5)
    rotate: bool = True

    def __post_init__(self) -> None:
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            raise AccountantError(f'clipping_norm must be positive and finite, got {self.clipping_norm}')
        if not self.min_clients >= 1:
            raise AccountantError(f'min_clients must be at least 1, got {self.min_clients}')

    @classmethod
    def from_fleet_parameters(cls, values: Mapping[str, Any]) -> DPProfile:
        """The profile the fleet-wide ROS parameters set (``clipping_norm``, ``noise_multiplier``,
        ``min_clients``, ``plaintext_bits``), from a parameter mapping or a settings dataclass's fields."""
        return cls(clipping_norm=values['clipping_norm'], noise_multiplier=values['noise_multiplier'],
                   min_clients=values['min_clients'], bits=values['plaintext_bits'])

    def skellam_config(self, dim: int, max_clients: int) -> SkellamConfig:
        """The encoder configuration this policy implies for a `dim`-vector round."""
        return SkellamConfig(dim=dim, clipping_norm=self.clipping_norm, noise_multiplier=self.noise_multiplier,
                             min_clients=self.min_clients, max_clients=max_clients, bits=self.bits,
                             beta=self.beta, rotate=self.rotate)


@dataclass(frozen=True)
class PrivacyBudget:
    """One robot's own limit: epsilon at `delta`, and whether a round that would exceed it is refused."""

    epsilon: float
    delta: float = 1e-5
    hard_stop: bool = True

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise AccountantError(f'epsilon budget must be positive and finite, got {self.epsilon}')
        if not 0 < self.delta < 1:
            raise AccountantError(f'delta must be in (0, 1), got {self.delta}')


@dataclass
class PrivacyLedger:
    """One robot's running privacy spend: composed RDP over the rounds it contributed to."""

    budget: PrivacyBudget
    orders: tuple[int, ...] = RDP_ORDERS
    rounds: list[str] = field(default_factory=list)
    rdp: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rdp is None:
            self.rdp = np.zeros(len(self.orders))
        self.rdp = np.asarray(self.rdp, dtype=np.float64)
        if self.rdp.shape != (len(self.orders),):
            raise AccountantError('rdp curve does not match the orders')

    def epsilon(self) -> float:
        """(epsilon at the budget's delta) spent so far."""
        if not self.rounds:
            return 0.0
        return rdp_to_epsilon(self.orders, self.rdp, self.budget.delta)[0]

    def epsilon_after(self, config: SkellamConfig) -> float:
        """Epsilon the ledger would show after one more round with `config`."""
        return rdp_to_epsilon(self.orders, self.rdp + round_rdp(config, self.orders), self.budget.delta)[0]

    def charge(self, round_id: str, config: SkellamConfig) -> float:
        """Record a round and return the new epsilon; the hard stop refuses a round that would exceed the budget.

        Call before the update leaves the robot. With the hard stop disabled the round is
        recorded even past the budget (check `exceeded()`).
        """
        if round_id in self.rounds:
            raise AccountantError(f'round {round_id!r} already charged')
        after = self.epsilon_after(config)
        if self.budget.hard_stop and after > self.budget.epsilon:
            raise PrivacyBudgetExceeded(
                f'round {round_id!r} would raise epsilon from {self.epsilon():.4f} to {after:.4f}, '
                f'over the budget {self.budget.epsilon} (delta={self.budget.delta})')
        self.rdp = self.rdp + round_rdp(config, self.orders)
        self.rounds.append(round_id)
        return after

    def exceeded(self) -> bool:
        """True if the spend is over the budget (only possible with the hard stop disabled)."""
        return self.epsilon() > self.budget.epsilon

    def to_dict(self) -> dict:
        """JSON-ready state for persisting the ledger across restarts."""
        return {'orders': list(self.orders), 'rounds': list(self.rounds), 'rdp': [float(v) for v in self.rdp]}

    @classmethod
    def from_dict(cls, budget: PrivacyBudget, state: dict) -> "PrivacyLedger":
        """Restore a ledger saved with `to_dict`."""
        try:
            return cls(budget, tuple(int(a) for a in state['orders']), [str(r) for r in state['rounds']],
                       np.asarray(state['rdp'], dtype=np.float64))
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountantError(f'invalid ledger state: {exc}') from exc


def epsilon_after_rounds(config: SkellamConfig, rounds: int, delta: float) -> float:
    """Each robot's epsilon at `delta` after `rounds` rounds encoded with `config`, by its ledger's arithmetic."""
    if rounds < 1:
        raise AccountantError(f'rounds must be at least 1, got {rounds}')
    per_round, spent = round_rdp(config), np.zeros(len(RDP_ORDERS))
    for _ in range(rounds):
        spent = spent + per_round  # as `PrivacyLedger.charge` adds them, so the hard stop agrees to the bit
    return rdp_to_epsilon(RDP_ORDERS, spent, delta)[0]


def smallest_noise_multiplier(profile: DPProfile, dim: int, max_clients: int, rounds: int, epsilon: float,
                              delta: float, resolution: float = 0.01) -> float:
    """The least noise a budget allows: the smallest multiple of `resolution` as `profile`'s noise
    multiplier whose `rounds` rounds of `dim`-vectors spend at most `epsilon` at `delta`.

    Epsilon falls as the multiplier grows, so the search doubles a step count until the budget holds
    and then bisects; a budget no multiplier up to 1e6 meets is refused."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise AccountantError(f'epsilon budget must be positive and finite, got {epsilon}')
    if not resolution > 0:
        raise AccountantError(f'resolution must be positive, got {resolution}')

    def fits(steps: int) -> bool:
        noisy = dataclasses.replace(profile, noise_multiplier=round(steps * resolution, 12))
        return epsilon_after_rounds(noisy.skellam_config(dim, max_clients), rounds, delta) <= epsilon

    low, high = 0, 1
    while not fits(high):
        if high * resolution > 1e6:
            raise AccountantError(f'no noise multiplier up to 1e6 keeps {rounds} rounds within epsilon {epsilon}')
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return round(high * resolution, 12)
