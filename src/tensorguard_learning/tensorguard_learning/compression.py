"""Shared-seed random-k sparsification with error feedback.

Every robot derives the same k coordinates from the public round seed (SHAKE-128, so the choice
is reproducible on any platform and needs no communication), sends only the values there, and
keeps the rest as a residual. Because all robots send the same coordinates, the compressed
vectors still add up coordinate-wise, which is what the secure sum needs; top-k does not have
this property (its indices differ per robot and would leak which coordinates mattered).

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD"): the
robot's next local training starts from global + residual, and the delta it reports is measured
from the global model, so the residual is carried into the next report instead of being lost.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tensorguard_learning.errors import ConfigError, UpdateFormatError
from tensorguard_learning.policy import MoEPolicy

_DOMAIN = b'tensorguard/random-k/v1'


def select_coordinates(round_seed: bytes, total: int, k: int) -> np.ndarray:
    """k distinct coordinates of [0, total), sorted, derived from `round_seed` with SHAKE-128.

    Partial Fisher-Yates shuffle driven by 64-bit words of the SHAKE-128 stream, with rejection
    sampling so each draw is exactly uniform.
    """
    if not isinstance(round_seed, bytes | bytearray) or len(round_seed) < 16:
        raise ConfigError('round_seed must be at least 16 bytes')
    if not 0 < k <= total:
        raise ConfigError(f'need 0 < k <= total, got k={k}, total={total}')
    stream = hashlib.shake_128(_DOMAIN + len(round_seed).to_bytes(2, 'big') + bytes(round_seed)
                               + total.to_bytes(8, 'big') + k.to_bytes(8, 'big'))
    words = np.frombuffer(stream.digest(8 * (k + 64)), dtype='<u8').tolist()
    chosen: dict[int, int] = {}
    out = np.empty(k, dtype=np.int64)
    w = 0
    for i in range(k):
        span = total - i
        limit = (1 << 64) - ((1 << 64) % span)
        while True:
            if w == len(words):
                words += np.frombuffer(stream.digest(16 * len(words))[8 * len(words):], dtype='<u8').tolist()
            r = words[w]
            w += 1
            if r < limit:
                break
        j = i + r % span
        out[i] = chosen.get(j, j)
        chosen[j] = chosen.get(i, i)
    return np.sort(out)


def round_coordinates(round_seed: bytes, segment_sizes: Sequence[int], k: int,
                      always_send: Sequence[int] = ()) -> np.ndarray:
    """The round's coordinates: all of the `always_send` segments plus k random-k of the others.

    Small segments that every robot must keep consistent (task embeddings and router rows) are
    cheap to send whole; the random-k is drawn over the remaining coordinates only. Depends only
    on public data (seed, layout), so it is the same on every robot.
    """
    bounds = np.concatenate([[0], np.cumsum(segment_sizes)]).astype(np.int64)
    if any(not 0 <= s < len(segment_sizes) for s in always_send):
        raise ConfigError(f'always_send segments {list(always_send)} out of range 0..{len(segment_sizes) - 1}')
    fixed_mask = np.zeros(int(bounds[-1]), dtype=bool)
    for s in always_send:
        fixed_mask[bounds[s]:bounds[s + 1]] = True
    rest = np.flatnonzero(~fixed_mask)
    chosen = rest[select_coordinates(round_seed, rest.size, k)] if k else np.empty(0, np.int64)
    return np.union1d(np.flatnonzero(fixed_mask), chosen).astype(np.int64)


def directed_coordinates(round_seed: bytes, segment_sizes: Sequence[int], k: int, public_delta: np.ndarray,
                         always_send: Sequence[int] = (), directed_share: float = 0.5) -> np.ndarray:
    """The round's coordinates with the budget spent where the signal was: all `always_send` segments,
    the `directed_share` of k where the previous round's public aggregate (`public_delta`, the
    difference of the last two published global models) moved most (never where it did not move),
    and random-k of the rest.

    Time-correlated sparsification (Ozfatura, Ozfatura and Gunduz, "Time-Correlated Sparsification
    for Communication-Efficient Federated Learning", ISIT 2021): successive aggregates are large on
    similar coordinates. The ranking uses only the published models, so every robot derives the same
    set and the vectors stay summable; ties break on the lower index, so the choice is the same on
    every platform. The random part keeps coordinates that were never sent reachable.
    """
    public_delta = np.asarray(public_delta, dtype=np.float64)
    total = int(sum(segment_sizes))
    if public_delta.shape != (total,):
        raise UpdateFormatError(f'public delta has shape {public_delta.shape}, the layout has {total} values')
    if not 0.0 <= directed_share <= 1.0:
        raise ConfigError(f'directed_share must be in [0, 1], got {directed_share}')
    fixed = round_coordinates(round_seed, segment_sizes, 0, always_send)
    free = np.ones(public_delta.size, dtype=bool)
    free[fixed] = False
    candidates = np.flatnonzero(free)
    if not 0 < k <= candidates.size:
        raise ConfigError(f'need 0 < k <= {candidates.size} free coordinates, got k={k}')
    directed = min(int(round(k * directed_share)), int(np.count_nonzero(public_delta[candidates])))
    order = np.lexsort((candidates, -np.abs(public_delta[candidates])))
    top = candidates[order[:directed]]
    rest = np.setdiff1d(candidates, top, assume_unique=True)
    explored = rest[select_coordinates(round_seed, rest.size, k - directed)] if k > directed else rest[:0]
    return np.union1d(fixed, np.union1d(top, explored)).astype(np.int64)


def adapter_round_coordinates(round_seed: bytes, policy: MoEPolicy, k: int) -> np.ndarray:
    """A fleet round's coordinates of `policy`'s adapter: every coordinate when k covers them all,
    else every task segment (small, kept consistent) plus k random-k expert coordinates."""
    sizes = policy.segment_sizes()
    if k >= sum(sizes):
        return np.arange(sum(sizes), dtype=np.int64)
    return round_coordinates(round_seed, sizes, k, always_send=range(policy.cfg.num_experts, len(sizes)))


def sparsify(dense: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Values of `dense` at `indices` (float32)."""
    return np.asarray(dense, dtype=np.float32)[indices]


def reconstruct(values: np.ndarray, indices: np.ndarray, total: int) -> np.ndarray:
    """Server side: a dense float32 vector of length `total`, `values` at `indices`, zeros elsewhere."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape != indices.shape:
        raise UpdateFormatError(f'{values.shape[0]} values for {indices.shape[0]} coordinates')
    if indices.size and (indices.min() < 0 or indices.max() >= total):
        raise UpdateFormatError(f'coordinates out of range [0, {total})')
    dense = np.zeros(total, dtype=np.float32)
    dense[indices] = values
    return dense


class ErrorFeedback:
    """Robot-side residual of coordinates not yet sent; never leaves the robot."""

    def __init__(self, total: int) -> None:
        self.residual = np.zeros(total, dtype=np.float32)

    def start_from(self, policy: MoEPolicy) -> list[np.ndarray]:
        """Move `policy` (holding the global model) to global + residual; return the global segments."""
        global_segments = policy.flatten_segments()
        sizes = [s.size for s in global_segments]
        if sum(sizes) != self.residual.size:
            raise UpdateFormatError(f'residual has {self.residual.size} coordinates, policy {sum(sizes)}')
        parts = np.split(self.residual, np.cumsum(sizes)[:-1])
        policy.load_segments([g + r for g, r in zip(global_segments, parts)])
        return global_segments

    def compress(self, dense_delta: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Return the delta's values at `indices`; keep everything else as the new residual."""
        dense_delta = np.asarray(dense_delta, dtype=np.float32)
        if dense_delta.shape != self.residual.shape:
            raise UpdateFormatError(f'delta has shape {dense_delta.shape}, residual {self.residual.shape}')
        values = dense_delta[indices].copy()
        self.residual = dense_delta.copy()
        self.residual[indices] = 0.0
        return values


def expert_head_coordinates(policy: MoEPolicy) -> np.ndarray:
    """Public, fixed coordinates: every expert's biases and output layer, plus every task segment.

    A parameter-efficient subset in the spirit of BitFit (Ben Zaken et al. 2022: fine-tune biases
    only) with the experts' last layer added; it depends only on the layout, so every robot sends the
    same coordinates and the vectors stay summable.
    """
    sizes = policy.segment_sizes()
    keep: list[np.ndarray] = []
    offset = 0
    for expert in policy.adapter.experts:
        head = {id(p) for p in expert[-1].parameters()}
        for p in expert.parameters():
            if p.dim() == 1 or id(p) in head:
                keep.append(np.arange(offset, offset + p.numel(), dtype=np.int64))
            offset += p.numel()
    keep.append(np.arange(offset, sum(sizes), dtype=np.int64))
    return np.concatenate(keep)
