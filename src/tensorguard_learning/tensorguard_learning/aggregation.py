"""Plaintext aggregation over exactly the numbers the encrypted path carries.

Update vector of one robot (float32, what the DP layer clips and the crypto layer encrypts):

    [ w_0 * d_0[sel_0] | w_1 * d_1[sel_1] | ... | w_{S-1} * d_{S-1}[sel_{S-1}] | w_0 ... w_{S-1} ]

where segment s is expert s (s < E) or task s - E, d_s its parameter delta, sel_s the round's
shared coordinates falling into segment s (all of them without compression), and w_s the
segment's weight. The server only needs the coordinate-wise SUM of these vectors: it then
divides each segment's summed values by its summed weight, so the per-segment weighted mean
sum_i w_is d_is / sum_i w_is comes out after decryption without any single w_is being seen.

- `ExpertDrivenStrategy`: w_s = the robot's usage of expert s (mean routing weight) or of task s
  (fraction of its samples), so robots that never route to an expert do not dilute it.
- `FedAvgStrategy` (McMahan et al. 2017) baseline: w_s = 1 for every segment, i.e. each segment is
  the plain mean over the robots that reported (all robots have equal weight).
"""
from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from tensorguard_learning.errors import UpdateFormatError
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import LocalUpdate


class _Strategy(abc.ABC):
    """Shared update layout and server arithmetic; subclasses choose the segment weights."""

    def __init__(self, quorum_threshold: int = 2) -> None:
        if quorum_threshold < 1:
            raise UpdateFormatError(f'quorum_threshold must be >= 1, got {quorum_threshold}')
        self.quorum_threshold = quorum_threshold

    @abc.abstractmethod
    def segment_weights(self, update: LocalUpdate) -> np.ndarray:
        """Weight of each segment of one robot's update."""

    def flatten_update(self, update: LocalUpdate, values: np.ndarray | None = None,
                       indices: np.ndarray | None = None) -> np.ndarray:
        """The robot's update vector (see module docstring).

        `values`/`indices`: already compressed delta values at the round's coordinates (from
        `ErrorFeedback.compress`); without them the dense delta is sent.
        """
        sizes = [d.size for d in update.segment_deltas()]
        weights = self.segment_weights(update).astype(np.float32)
        if values is None:
            values, indices = update.dense_delta(), np.arange(sum(sizes))
        owner = np.searchsorted(np.cumsum(sizes), indices, side='right')
        return np.concatenate([weights[owner] * np.asarray(values, np.float32), weights]).astype(np.float32)

    def finalize(self, summed: np.ndarray, segment_sizes: Sequence[int],
                 indices: np.ndarray | None = None) -> np.ndarray:
        """From the SUM of robots' vectors, the dense aggregated delta (zeros off the coordinates)."""
        total = int(sum(segment_sizes))
        if indices is None:
            indices = np.arange(total)
        num_segments = len(segment_sizes)
        if summed.shape != (indices.size + num_segments,):
            raise UpdateFormatError(
                f'summed vector has shape {summed.shape}, expected ({indices.size + num_segments},)')
        weight_sums = summed[indices.size:].astype(np.float64)
        owner = np.searchsorted(np.cumsum(segment_sizes), indices, side='right')
        denom = weight_sums[owner]
        means = np.divide(summed[:indices.size], denom, out=np.zeros(indices.size), where=denom > 1e-12)
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


class ExpertDrivenStrategy(_Strategy):
    """Per-expert (and per-task) means weighted by how much each robot used that segment."""

    def segment_weights(self, update: LocalUpdate) -> np.ndarray:
        """Expert usage then task usage, each in [0, 1]."""
        return np.concatenate([update.expert_usage, update.task_usage])


class FedAvgStrategy(_Strategy):
    """Plain FedAvg baseline: every segment is the unweighted mean over reporting robots."""

    def segment_weights(self, update: LocalUpdate) -> np.ndarray:
        """All ones."""
        return np.ones(len(update.expert_usage) + len(update.task_usage), dtype=np.float32)


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
    """Inverse of `flatten_update` for one vector: (dense weighted delta, segment weights)."""
    total = int(sum(segment_sizes))
    if indices is None:
        indices = np.arange(total)
    if vector.shape != (indices.size + len(segment_sizes),):
        raise UpdateFormatError(f'vector has shape {vector.shape}, expected ({indices.size + len(segment_sizes)},)')
    dense = np.zeros(total, dtype=np.float32)
    dense[indices] = vector[:indices.size]
    return dense, vector[indices.size:].copy()
