"""Aggregation strategies: what a robot contributes and what the server makes of the SUM.

Secure aggregation reveals only the coordinate-wise SUM of the robots' float32 update vectors (what
the DP layer clips and the crypto layer encrypts), so a `Strategy` is split in two halves that must
agree on one vector layout: `flatten_update` (robot) and `finalize` (server, decoded sum -> dense
delta). Every vector is the round's delta values followed by a few weight slots; the server divides
each value by the summed weight of its segment, so no single robot's weight is ever seen.

- `ExpertDrivenStrategy` (S = experts + tasks segments, S weight slots):

      [ w_0 * d_0[sel_0] | ... | w_{S-1} * d_{S-1}[sel_{S-1}] | w_0 ... w_{S-1} ]

  w_s = the robot's usage of expert s (mean routing weight) or of task s (fraction of its samples),
  so robots that never route to an expert do not dilute it.
- `FedAvgStrategy` (McMahan et al. 2017, one count slot):

      [ d[sel] | 1 ]

  every coordinate is the plain mean over the robots that reported; the count slot sums to the
  number of contributors inside the decrypted sum itself.

Segment s holds the adapter coordinates of expert s (s < E) or task s - E; sel_s are the round's
shared coordinates falling into it (all of them without compression).
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from tensorguard_learning.errors import ConfigError, UpdateFormatError
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import LocalUpdate


def _owners(segment_sizes: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """Segment of each coordinate index."""
    return np.searchsorted(np.cumsum(segment_sizes), indices, side='right')


class Strategy(abc.ABC):
    """An aggregation rule, robot half and server half (Flower's `Strategy`, shaped by secure aggregation).

    Subclasses set `name` and the layout: `weight_slots`, `flatten_update` and `weight_sums`.
    """

    name: ClassVar[str]

    def __init__(self, quorum_threshold: int = 2) -> None:
        if quorum_threshold < 1:
            raise UpdateFormatError(f'quorum_threshold must be >= 1, got {quorum_threshold}')
        self.quorum_threshold = quorum_threshold

    @abc.abstractmethod
    def weight_slots(self, num_segments: int) -> int:
        """Number of weight slots after the delta values."""

    def vector_length(self, segment_sizes: Sequence[int], indices: np.ndarray | None = None) -> int:
        """Length of every robot's vector in a round (the codec's `dim`): the round's configuration."""
        values = int(sum(segment_sizes)) if indices is None else int(np.asarray(indices).size)
        return values + self.weight_slots(len(segment_sizes))

    @abc.abstractmethod
    def flatten_update(self, update: LocalUpdate, values: np.ndarray | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
        """The robot's update vector (float32, `vector_length` long).

        `values`/`indices`: already compressed delta values at the round's coordinates (from
        `ErrorFeedback.compress`); without them the dense delta is sent.
        """

    @abc.abstractmethod
    def weight_sums(self, summed: np.ndarray, segment_sizes: Sequence[int]) -> np.ndarray:
        """Summed weight of each segment, read from a summed vector of the right length."""

    def finalize(self, summed: np.ndarray, segment_sizes: Sequence[int], indices: np.ndarray | None = None,
                 floor: float = 0.0) -> np.ndarray:
        """From the SUM of robots' vectors, the dense aggregated delta (zeros off the coordinates).

        A segment whose summed weight is under `floor` (or about zero) stays zero.
        """
        total = int(sum(segment_sizes))
        if indices is None:
            indices = np.arange(total)
        expected = self.vector_length(segment_sizes, indices)
        if summed.shape != (expected,):
            raise UpdateFormatError(f'summed vector has shape {summed.shape}, expected ({expected},)')
        denom = np.asarray(self.weight_sums(summed, segment_sizes), np.float64)[_owners(segment_sizes, indices)]
        means = np.divide(summed[:indices.size], denom, out=np.zeros(indices.size),
                          where=(denom > 1e-12) & (denom >= floor))
        dense = np.zeros(total, dtype=np.float32)
        dense[indices] = means
        return dense

    def aggregate(self, vectors: Sequence[np.ndarray], segment_sizes: Sequence[int],
                  indices: np.ndarray | None = None) -> np.ndarray:
        """Plaintext reference: sum the robots' vectors and finalize (refuses below quorum)."""
        if len(vectors) < self.quorum_threshold:
            raise UpdateFormatError(f'{len(vectors)} updates is below quorum_threshold={self.quorum_threshold}')
        shapes = {np.asarray(v).shape for v in vectors}
        if len(shapes) != 1:
            raise UpdateFormatError(f'updates have different shapes {sorted(shapes)}')
        summed = np.sum(np.stack(vectors).astype(np.float64), axis=0)
        return self.finalize(summed, segment_sizes, indices)


class ExpertDrivenStrategy(Strategy):
    """Per-expert (and per-task) means weighted by how much each robot used that segment."""

    name = 'expert_driven'

    def segment_weights(self, update: LocalUpdate) -> np.ndarray:
        """Expert usage then task usage, each in [0, 1]."""
        return np.concatenate([update.expert_usage, update.task_usage])

    def weight_slots(self, num_segments: int) -> int:
        """One usage weight per segment."""
        return num_segments

    def flatten_update(self, update: LocalUpdate, values: np.ndarray | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
        """Usage-weighted values, then the segment weights (see module docstring)."""
        sizes = [d.size for d in update.segment_deltas()]
        weights = self.segment_weights(update).astype(np.float32)
        if values is None:
            values, indices = update.dense_delta(), np.arange(sum(sizes))
        owner = _owners(sizes, indices)
        return np.concatenate([weights[owner] * np.asarray(values, np.float32), weights]).astype(np.float32)

    def weight_sums(self, summed: np.ndarray, segment_sizes: Sequence[int]) -> np.ndarray:
        """The last S slots: summed usage per segment."""
        return summed[len(summed) - len(segment_sizes):]


class FedAvgStrategy(Strategy):
    """Plain FedAvg: every coordinate is the unweighted mean over the robots that reported."""

    name = 'fedavg'

    def weight_slots(self, num_segments: int) -> int:
        """One count slot, whatever the number of segments."""
        return 1

    def flatten_update(self, update: LocalUpdate, values: np.ndarray | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
        """The delta values as they are, then 1 (see module docstring); `indices` only locate `values`."""
        if values is None:
            values = update.dense_delta()
        elif indices is not None and np.shape(values) != np.shape(indices):
            raise UpdateFormatError(f'{np.size(values)} values for {np.size(indices)} coordinates')
        return np.append(np.asarray(values, np.float32), np.float32(1.0))

    def weight_sums(self, summed: np.ndarray, segment_sizes: Sequence[int]) -> np.ndarray:
        """The summed count slot (the number of contributors, plus DP noise) for every segment."""
        return np.full(len(segment_sizes), summed[-1], dtype=np.float64)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (ExpertDrivenStrategy, FedAvgStrategy)}


def strategy_from_name(name: str, **kwargs) -> Strategy:
    """The strategy registered under `name` ('expert_driven' or 'fedavg'), built with `kwargs`."""
    if name not in STRATEGIES:
        raise ConfigError(f'unknown aggregation strategy {name!r}: choose one of {", ".join(sorted(STRATEGIES))}')
    return STRATEGIES[name](**kwargs)


def apply_update(policy: MoEPolicy, aggregated: np.ndarray, server_learning_rate: float = 1.0) -> None:
    """Add a dense aggregated delta (length = sum of segment sizes) to the policy's adapter."""
    sizes = policy.segment_sizes()
    aggregated = np.asarray(aggregated, dtype=np.float32)
    if aggregated.shape != (sum(sizes),):
        raise UpdateFormatError(f'aggregated delta has shape {aggregated.shape}, policy needs ({sum(sizes)},)')
    if not np.all(np.isfinite(aggregated)):
        raise UpdateFormatError('aggregated delta contains NaN or infinity')
    parts = np.split(aggregated * server_learning_rate, np.cumsum(sizes)[:-1])
    policy.load_segments([s + p for s, p in zip(policy.flatten_segments(), parts)])


def split_update_vector(vector: np.ndarray, segment_sizes: Sequence[int],
                        indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `ExpertDrivenStrategy.flatten_update` for one vector: (dense weighted delta, segment weights)."""
    total = int(sum(segment_sizes))
    if indices is None:
        indices = np.arange(total)
    if vector.shape != (indices.size + len(segment_sizes),):
        raise UpdateFormatError(f'vector has shape {vector.shape}, expected ({indices.size + len(segment_sizes)},)')
    dense = np.zeros(total, dtype=np.float32)
    dense[indices] = vector[:indices.size]
    return dense, vector[indices.size:].copy()
