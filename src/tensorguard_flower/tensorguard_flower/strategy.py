"""`TensorGuardStrategy`: a Flower `Strategy` whose rounds are TensorGuard rounds (ROS-free).

Each Flower round is one aggregator round, made of the library calls the aggregator and key-service
nodes make (`tensorguard_aggregator.rounds`, `.key_service`, `.gate`); nothing is re-implemented:

    configure_fit   the key service issues the round's lattice key (`KeyServiceCore.round_key`); the
                    aggregator announces the signed RoundConfigPackage (`Aggregator.open_round`: fresh
                    seed and transport key from the OS CSPRNG); every available client gets it with
                    the current signed ModelPackage (no sampling, so no amplification is claimed)
    aggregate_fit   every reply's UpdatePackage is verified, unsealed and added to the encrypted sum
                    (`Aggregator.accept`); at quorum the key service checks the manifest and decrypts
                    only the aggregate (`KeyServiceCore.decrypt`); the aggregator decodes the
                    Skellam-noised sum into the strategy's candidate (`Aggregator.candidate`:
                    expert-driven by default); the gate rolls it out in Meta-World and decides
                    (`DeploymentGate`); a deployed candidate is signed and stored as the next model
                    (`Aggregator.publish_model`); the round is closed and logged (`close_round`, `RoundLog`)

A `canary` decision is settled by the gate's second, independent trial alone (`DeploymentGate.promote`,
as the node does with ``canary_min_episodes`` 0): Flower sends one model to every client, so there
is no canary subset, and an unpromoted candidate is simply never sent. Replies that do not verify
are refused with their reason and counted in `rejected`; no reply can stop the server.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from tensorguard_aggregator.gate import DeploymentGate, RoundLog
from tensorguard_aggregator.key_service import KeyServiceCore
from tensorguard_aggregator.rounds import Aggregator
from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_flower.messages import MODEL_TENSOR, REFUSED, ROUND_CONFIG, UPDATE_TENSOR
from tensorguard_learning.training import BCData

logger = logging.getLogger(__name__)


class TensorGuardStrategy(Strategy):
    """Flower strategy running the aggregator's, key service's and gate's round (see module docstring)."""

    def __init__(self, aggregator: Aggregator, key_service: KeyServiceCore, gate: DeploymentGate,
                 round_log: RoundLog, held_out: BCData, min_available_clients: int | None = None,
                 on_round: Callable[[dict], None] = lambda _outcome: None) -> None:
        if aggregator.model is None:
            raise ValueError('the fleet has no model yet: publish an initial model first')
        if gate.settings.canary_min_episodes:
            raise ValueError('canary_min_episodes must be 0: Flower clients report no on-robot episodes')
        self.aggregator = aggregator
        self.key_service = key_service
        self.gate = gate
        self.round_log = round_log
        self.held_out = held_out
        self.min_available_clients = min_available_clients or aggregator.settings.quorum
        self.rejected: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.outcomes: list[dict] = []
        self.on_round = on_round

    def model_parameters(self) -> Parameters:
        """The current signed ModelPackage as Flower parameters."""
        return Parameters(tensors=[self.aggregator.model.serialize()], tensor_type=MODEL_TENSOR)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The fleet's current model (provisioning's initial model on a new fleet)."""
        return self.model_parameters()

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Open an aggregator round and send its signed config and the current model to every client."""
        try:
            round_id = self.aggregator.next_round_id()
            config = self.aggregator.open_round(self.key_service.round_key(round_id))
        except Refusal as exc:
            logger.error('flower round %d: no TensorGuard round opened (%s): %s', server_round, exc.reason, exc)
            return []
        client_manager.wait_for(self.min_available_clients)
        clients = client_manager.sample(client_manager.num_available())
        if not clients:
            self._finish({'round_id': config.round_id, 'server_round': server_round, 'outcome': 'no_clients',
                          'participants': []})
            return []
        instructions = FitIns(self.model_parameters(), {ROUND_CONFIG: config.serialize()})
        return [(client, instructions) for client in clients]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Add the verified updates to the encrypted sum; at quorum decrypt the aggregate, decode the
        candidate, gate it and publish it; returns the fleet's model after the round and its outcome."""
        current = self.aggregator.current
        if current is None:
            return None, {'outcome': 'no_open_round'}
        config = current.config
        refused, rejected, spent, received = Counter(), Counter(), [], []
        for _, reply in results:
            if REFUSED in reply.metrics:
                refused[str(reply.metrics[REFUSED])] += 1
                continue
            if reply.parameters.tensor_type != UPDATE_TENSOR or len(reply.parameters.tensors) != 1:
                rejected[Reason.MALFORMED] += 1
                continue
            try:
                package = self.aggregator.accept(reply.parameters.tensors[0])
            except Refusal as exc:
                rejected[exc.reason] += 1
                logger.warning('round %d: update refused (%s): %s', config.round_id, exc.reason, exc)
                continue
            spent.append(package.safety_stats.dp_epsilon_consumed)
            received.append(len(reply.parameters.tensors[0]))
        self.refused.update(refused)
        self.rejected.update(rejected)
        outcome = {'round_id': config.round_id, 'server_round': server_round, 'participants': current.contributors,
                   'refused': dict(refused), 'rejected': dict(rejected), 'failures': len(failures),
                   'epsilon_max': max(spent, default=0.0),
                   'bytes_per_robot': int(sum(received) / len(received)) if received else 0}
        if len(current.contributors) < config.quorum:
            outcome.update(outcome='below_quorum', detail=f'{len(current.contributors)} updates accepted, '
                                                           f'quorum is {config.quorum}')
        else:
            self._aggregate(outcome)
        self._finish(outcome)
        keys = ('outcome', 'decision', 'success_rate', 'success_lower_bound', 'model_version', 'epsilon_max')
        metrics = {key: outcome[key] for key in keys if outcome.get(key) is not None}
        metrics.update(round_id=config.round_id, contributors=len(outcome['participants']),
                       refused=sum(refused.values()), rejected=sum(rejected.values()))
        return self.model_parameters(), metrics

    def _aggregate(self, outcome: dict) -> None:
        """Decrypt, decode, gate and publish the open round's candidate, recording it in `outcome`."""
        config = self.aggregator.current.config
        try:
            result, _ = self.key_service.decrypt(config.serialize(), self.aggregator.aggregate_request())
            candidate = self.aggregator.candidate(result)
            selected, selection = self.gate.select_tasks(candidate.policy, self.aggregator.model_policy,
                                                         config.round_id)
            candidate = replace(candidate, policy=selected)
            metrics = self.gate.evaluate(candidate.policy, config.round_id, self.aggregator.model_policy,
                                         self.held_out)
            decision, failures = self.gate.decide(metrics)
            outcome.update(outcome='aggregated', decision=decision, failures=failures,
                           participants=list(candidate.contributors), success_rate=metrics.success_rate,
                           success_lower_bound=metrics.success_lower_bound,
                           eval_episodes=sum(metrics.episodes.values()), kl_divergence=metrics.kl_divergence,
                           delta_norm=candidate.delta_norm, frozen_segments=candidate.frozen_segments,
                           selection=selection)
            promoted = False
            if decision == 'canary':
                trial = self.gate.evaluate(candidate.policy, config.round_id, self.aggregator.model_policy,
                                           self.held_out, canary_trial=True)
                promoted, canary_failures = self.gate.promote(trial)
                outcome.update(canary_success_rate=trial.success_rate, canary_promoted=promoted,
                               canary_failures=canary_failures)
            if decision == 'deploy' or promoted:
                outcome['model_version'] = self.aggregator.publish_model(candidate.policy, config.round_id,
                                                                         'deploy').model_version
            outcome['deployed_success_rate'] = self.gate.settle(decision, metrics, promoted)
        except Refusal as exc:
            outcome.update(outcome='failed', reason=exc.reason, detail=str(exc))
            logger.error('round %d failed (%s): %s', config.round_id, exc.reason, exc)

    def _finish(self, outcome: dict) -> None:
        """Close the aggregator's round and append its outcome to the server's round log."""
        outcome.setdefault('closed_at', time.time())
        self.aggregator.close_round(outcome)
        self.round_log.append(outcome)
        self.outcomes.append(outcome)
        self.on_round(outcome)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation: a robot's metric would describe it outside the DP guarantee."""
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate (see `configure_evaluate`)."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """The gate evaluates every candidate inside `aggregate_fit`, before it can become the model."""
        return None

