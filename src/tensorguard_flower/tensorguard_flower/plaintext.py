"""The fleet's rounds in one process tree, without Flower or the lattice layer: what a round learns.

Used for the privacy-utility frontier (`flower-frontier`) and the non-private reference of
`flower-scale`, where thousands of robot-rounds are needed and only what is learned matters. It makes
the same library calls as the robots and the aggregator:

- per robot `train_local` under the edge client's budget and envelope (`client.local_training`) from
  the current global model, then `ExpertDrivenStrategy.flatten_update`;
- a private round: the robot's Skellam encoder (clip, rotate, scale, round, Skellam noise, mod 2^b)
  and the aggregator's decoder (`update_codec.encoded_sum`, `decode_encoded_sum`), with a fresh round
  seed from the OS CSPRNG. The lattice encryption is left out because it is exact: the key service's
  decryption is the modular sum of the encodings (`test_secagg.py::test_decrypted_sum_equals_sum_mod_2b`
  in tensorguard_crypto), so the decoded sum has the same distribution;
- a non-private round (the reference): the robots' vectors summed as they are, no clipping, no noise,
  no rounding;
- the aggregator's step from sum to candidate (`rounds.segment_weight_floor`, `apply_round_sum`), the
  gate's per-task selection when its settings ask for it (`DeploymentGate.select_tasks`) and its
  evaluation of every candidate on the round's seeds; every candidate is applied, as in
  `flower-scale` (the gate deploys every candidate there).

Robots train in a pool of worker processes; each worker returns the modular (or plain) sum over
its share of the robots, so no more than one vector per worker is held at a time. The workers start
from a fork server, not by forking the caller: a process that has run Ray or rclpy holds threads
whose state a forked child would inherit half-way (one such worker died abruptly in a test run after
the Flower tests), while the fork server is a fresh interpreter. A worker exits as soon as the
process that started the pool is gone, however that process ended.
"""
from __future__ import annotations

import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np
import torch

from tensorguard_aggregator.gate import DeploymentGate
from tensorguard_aggregator.rounds import apply_round_sum, segment_weight_floor
from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile, epsilon_after_rounds
from tensorguard_crypto.params import ParameterError, standard_params
from tensorguard_edge.client import EdgeSettings, local_training
from tensorguard_learning.aggregation import ExpertDrivenStrategy
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import BCData, train_local

SECURITY_LEVEL = 128
_WORKER: dict = {}


def _start_worker(demos: Sequence[Sequence[Demonstration]], edge: EdgeSettings) -> None:
    torch.set_num_threads(1)
    _WORKER.update(demos=demos, edge=edge)
    threading.Thread(target=_exit_with_parent, args=(multiprocessing.parent_process().sentinel,), daemon=True,
                     name='exit-with-parent').start()


def _exit_with_parent(parent_sentinel: int) -> None:
    # A caller stopped by a signal (SIGTERM, SIGKILL) runs no clean-up, and a worker in the middle of
    # its share would train on for minutes with nobody to take the result.
    wait([parent_sentinel])
    os._exit(1)


def _sum_of_robots(policy: MoEPolicy, robots: Sequence[int], codec: update_codec.RoundCodec | None) -> np.ndarray:
    edge: EdgeSettings = _WORKER['edge']
    budget, envelope = local_training(edge)
    reference = policy.flatten_segments()
    strategy = ExpertDrivenStrategy()
    vectors = (strategy.flatten_update(train_local(policy.clone(), _WORKER['demos'][robot], budget, envelope,
                                                   modules=tuple(edge.trainable_modules), reference=reference))
               for robot in robots)
    if codec is None:
        return np.sum([np.asarray(v, dtype=np.float64) for v in vectors], axis=0)
    return update_codec.encoded_sum(codec, vectors)


class RobotPool:
    """K robots' local training in `workers` processes; `round_sum` is one round's decoded sum."""

    def __init__(self, demos: Sequence[Sequence[Demonstration]], edge: EdgeSettings, workers: int) -> None:
        self.robots = len(demos)
        self.workers = max(1, min(workers, self.robots))
        self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context('forkserver'),
                                             initializer=_start_worker, initargs=(demos, edge))

    def __enter__(self) -> RobotPool:
        return self

    def __exit__(self, *_exc) -> None:
        self._executor.shutdown(cancel_futures=True)

    def round_sum(self, policy: MoEPolicy, codec: update_codec.RoundCodec | None,
                  trained: Callable[[int], None] = lambda _robots: None) -> np.ndarray:
        """Every robot trains from `policy`; the sum of their vectors as the aggregator decodes it
        (`codec` None: the plain sum). `trained(n)` is called as each share of n robots is done."""
        shares = [list(share) for share in np.array_split(np.arange(self.robots), self.workers * 4) if share.size]
        futures = [self._executor.submit(_sum_of_robots, policy, share, codec) for share in shares]
        share_of = {future: len(share) for future, share in zip(futures, shares)}
        for future in as_completed(futures):
            trained(share_of[future])
        parts = [future.result() for future in futures]  # in share order: the float sum does not depend on timing
        if codec is None:
            return np.sum(parts, axis=0)
        return update_codec.decode_encoded_sum(codec, np.sum(parts, axis=0))


@dataclass(frozen=True)
class Mechanism:
    """The DP mechanism of a run, calibrated for all K robots (min_clients = K); `noise_multiplier`
    None is the non-private reference."""

    noise_multiplier: float | None
    clipping_norm: float = 2.0
    plaintext_bits: int = 20
    delta: float = 1e-5

    @property
    def private(self) -> bool:
        """Whether rounds are clipped and noised."""
        return self.noise_multiplier is not None

    def profile(self, robots: int) -> DPProfile:
        """The fleet's DP profile for `robots` robots."""
        return DPProfile(clipping_norm=self.clipping_norm, noise_multiplier=self.noise_multiplier,
                         min_clients=robots, bits=self.plaintext_bits)

    def epsilon_after(self, robots: int, dim: int, rounds: int) -> float | None:
        """Each robot's epsilon (at `delta`) after `rounds` rounds, by the robots' own ledger
        arithmetic; None without privacy."""
        if not self.private:
            return None
        return epsilon_after_rounds(self.profile(robots).skellam_config(dim, robots), rounds, self.delta)


def lattice_refusal(robots: int) -> str | None:
    """Why the lattice parameters of these commands' rounds (`SECURITY_LEVEL`, `Mechanism.plaintext_bits`)
    cannot sum `robots` updates (the body noise grows with the number summed), or None if they can."""
    try:
        standard_params(SECURITY_LEVEL, Mechanism.plaintext_bits, robots, robots)
    except ParameterError as exc:
        return str(exc)
    return None


def run_rounds(pool: RobotPool, initial: MoEPolicy, rounds: int, mechanism: Mechanism, gate: DeploymentGate,
               min_segment_weight: float = 0.1, server_learning_rate: float = 1.0, held_out: BCData | None = None,
               progress: Callable[[dict], None] = lambda _row: None,
               trained: Callable[[int], None] = lambda _robots: None) -> list[dict]:
    """`rounds` rounds from `initial`: one row per round (success and its lower bound on the gate's
    seeds for that round, epsilon so far, frozen segments, norm of the applied delta, seconds), passed
    to `progress` as it is done; `trained(n)` as each share of n robots has trained in a round."""
    policy, rows = initial.clone(), []
    strategy = ExpertDrivenStrategy()
    dim = strategy.vector_length(policy.segment_sizes())
    for round_id in range(1, rounds + 1):
        started = time.monotonic()
        if mechanism.private:
            codec = update_codec.build_codec(mechanism.profile(pool.robots), dim, pool.robots, SECURITY_LEVEL,
                                             secrets.token_bytes(32))
            floor = segment_weight_floor(codec, pool.robots, min_segment_weight)
        else:
            codec, floor = None, min_segment_weight
        summed = pool.round_sum(policy, codec, trained)
        candidate, delta, frozen = apply_round_sum(policy, summed, floor, strategy, server_learning_rate)
        candidate, selection = gate.select_tasks(candidate, policy, round_id)
        metrics = gate.evaluate(candidate, round_id, current=policy, held_out=held_out)
        policy = candidate
        rows.append({'round': round_id, 'epsilon': mechanism.epsilon_after(pool.robots, dim, round_id),
                     'success': metrics.success_rate, 'lower': metrics.success_lower_bound,
                     'successes': metrics.successes, 'episodes': metrics.episodes,
                     'kl': metrics.kl_divergence, 'frozen_segments': frozen, 'selection': selection,
                     'delta_norm': float(np.linalg.norm(delta)), 'seconds': time.monotonic() - started})
        progress(rows[-1])
    return rows
