"""The fleet server's aggregator node: a thin lifecycle shell around `rounds.Aggregator`.

- Announces rounds (latched, signed ``RoundConfig``) on a schedule, on ``TriggerRound`` or through
  the ``RunRound`` action (with progress feedback).
- Verifies every ``EncryptedUpdate`` (its header ids must equal its signed package's) and adds its
  bodies to the round's running sum; refused messages are counted by reason and published in
  ``FleetStatus``; the node keeps running.
- Never dies on bad state on disk (a KMS audit log or state file that does not verify, an
  unwritable fleet directory): it refuses, counts, reports ERROR on ``/diagnostics`` while the
  condition holds, and recovers by itself once it no longer does.
- At quorum (all enrolled robots, or the deadline) sends the key service the signed manifest and
  summed bodies, turns the decrypted aggregate into a candidate, rolls it out in the simulator
  (evaluator), lets the gate decide reject / canary / deploy, and publishes the signed model.
- With ``site_aggregation`` on, a site gateway's ``SitePartialSum`` adds one sum of its robots' bodies
  for all of them (docs/site-aggregation.md); with it off (the default) every one is refused and counted.
- ``RevokeRobot`` revokes in the KMS; the very next package of that robot is refused.
- Robots' signed ``OutcomeReport``s (autonomous episodes per model version) are verified and
  tallied (`outcomes.OutcomeTally`); a canary is promoted only if the canary robots' own episodes
  pass the gate's on-robot checks too, and FleetStatus carries the deployed model's on-robot tally.

Evaluation and the key-service call run in a worker thread so updates keep arriving. One JSON
line per closed round is appended to ``server/rounds.jsonl`` for reports.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from rclpy.action import ActionServer
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from tensorguard_aggregator.gate import DeploymentGate, GateSettings, RoundLog
from tensorguard_aggregator.held_out import load_held_out
from tensorguard_aggregator.kms_check import KMSCheck
from tensorguard_aggregator.outcomes import OutcomeTally, VersionOutcomes
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings, RoundError
from tensorguard_crypto.fleet import passphrase_from_environment
from tensorguard_crypto.kms import KMSError
from tensorguard_crypto.verify import VerificationError, decode
from tensorguard_crypto.wire import OutcomeReport as OutcomeReportRecord
from tensorguard_crypto.wire import SitePartialSum as SitePartialSumRecord
from tensorguard_crypto.wire import UpdatePackage
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import (
    EncryptedUpdate,
    FleetStatus,
    ModelUpdate,
    OutcomeReport,
    RejectionCount,
    RoundConfig,
    SitePartialSum,
)
from tensorguard_msgs.srv import DecryptAggregate, IssueRoundKey, RevokeRobot, TriggerRound
from tensorguard_ros import qos, topics
from tensorguard_ros.diagnostics import DiagnosticsPublisher, Health
from tensorguard_ros.node_main import destroy_entities, enable_autostart, spin_node
from tensorguard_ros.package_transport import package_intact
from tensorguard_ros.params import declare_dataclass_parameters, follow_parameter_changes

# Bad state on disk: the KMS cannot be used (its audit log or state file does not verify or cannot
# be read), or the fleet directory cannot be read or written. An operation that meets one is
# refused and counted, never fatal. (A KMSError from a request's own input, such as revoking an
# unknown robot, is answered separately.)
STATE_ERRORS = (KMSError, OSError)
# Seconds after activation before an undiscovered key service is reported (both start together).
KEY_SERVICE_GRACE_S = 10.0


class AggregatorNode(LifecycleNode):
    """Lifecycle node owning the fleet's `Aggregator` (see module docstring)."""

    def __init__(self) -> None:
        super().__init__('aggregator')
        self.round_settings = declare_dataclass_parameters(self, AggregatorSettings)
        self.gate_settings = declare_dataclass_parameters(self, GateSettings)
        self.group = ReentrantCallbackGroup()
        self.core: Aggregator | None = None
        self.kms_check: KMSCheck | None = None
        self.gate = DeploymentGate(self.gate_settings)
        self.round_log: RoundLog | None = None
        self.health = Health(self.get_logger())
        self.diagnostics = DiagnosticsPublisher(self, self.health, self.round_settings.fleet_dir,
                                                self._diagnostic_values)
        self.roster: tuple[list[str], list[str]] = ([], [])
        self.unrecorded: dict | None = None
        self.activated_at = math.inf
        self.phase = 'idle'
        self.rounds_started = 0
        self.next_round_at = math.inf
        self.closing = False
        self.lock = threading.RLock()
        self.round_closed = threading.Condition(self.lock)
        self.outcome_arrived = threading.Condition(self.lock)
        self.outcomes: OutcomeTally | None = None
        self.worker: ThreadPoolExecutor | None = None
        self.last = {'success_rate': 0.0, 'lower_bound': 0.0, 'decision': ''}
        self.held_out = None
        self.interfaces = []  # publishers and clients, from configure to cleanup
        self.handles = []  # subscription, services, timers and action server, while active
        follow_parameter_changes(self, AggregatorSettings, self._apply_round_settings)
        follow_parameter_changes(self, GateSettings, self._apply_gate_settings)
        enable_autostart(self)

    # Lifecycle.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core = Aggregator(self.round_settings, passphrase_from_environment())
            unknown = sorted(set(self.gate_settings.eval_tasks) - set(self.core.model_policy.cfg.tasks))
            if unknown:
                raise ValueError(f'eval_tasks {unknown} are not tasks of the fleet model '
                                 f'{list(self.core.model_policy.cfg.tasks)}')
            self.held_out = load_held_out(self.core.paths, self.core.model_policy)
            self.round_log = RoundLog.of(self.core.paths)
            self.gate.deployed_success = self.round_log.deployed_success_rate()
        except Exception as exc:  # noqa: BLE001 - start-up failures are reported and refused.
            self.health.fault('configure', f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.health.clear('configure')
        self._report_state_set_aside()
        self.outcomes = self._load_outcomes()
        self.kms_check = KMSCheck(self.core.kms)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='close')
        self.config_pub = self.create_lifecycle_publisher(RoundConfig, topics.ROUND_CONFIG, qos.LATCHED)
        self.model_pub = self.create_lifecycle_publisher(ModelUpdate, topics.MODEL_UPDATES, qos.LATCHED)
        self.status_pub = self.create_lifecycle_publisher(FleetStatus, topics.FLEET_STATUS, qos.STATUS)
        self.key_service = self.create_client(DecryptAggregate, topics.DECRYPT_AGGREGATE, callback_group=self.group)
        self.round_keys = self.create_client(IssueRoundKey, topics.ISSUE_ROUND_KEY, callback_group=self.group)
        self.interfaces = [self.config_pub, self.model_pub, self.status_pub, self.key_service, self.round_keys]
        resumed = self.core.current
        self.get_logger().info(
            f'configured: model version {self.core.model.model_version}'
            + (f', resumed round {resumed.config.round_id} with {len(resumed.contributors)} updates'
               if resumed else ''))
        return TransitionCallbackReturn.SUCCESS

    def _report_state_set_aside(self) -> None:
        """Count what the core set aside on start (quarantined updates, an abandoned round, an
        unreadable model file) and hold an ERROR on /diagnostics until the next round closes."""
        problems = self.core.state_problems
        for reason, count in problems.items():
            for _ in range(count):
                self.health.refuse(reason)
        if problems:
            self.health.fault('stored_state', 'state on disk set aside at start: ' + ', '.join(
                f'{reason} x{count}' for reason, count in sorted(problems.items()))
                + f' (see {self.core.rounds_dir}/<round>/quarantine and the node log)')

    def _load_outcomes(self) -> OutcomeTally:
        """The saved outcome tally; an unreadable one is set aside (renamed), counted and reported."""
        path = self.core.paths.server / 'outcomes.json'
        try:
            return OutcomeTally(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = path.with_name(f'outcomes.unreadable-{int(time.time())}.json')
            path.replace(aside)
            self.health.refuse('stored_state')
            self.health.fault('stored_state', f'outcome tally unreadable ({type(exc).__name__}), set aside as '
                                              f"{aside.name}; robots' next reports rebuild it")
            return OutcomeTally(path)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.handles = [
            self.create_subscription(EncryptedUpdate, topics.ENCRYPTED_UPDATES, self._on_update, qos.UPDATES,
                                     callback_group=self.group),
            self.create_subscription(OutcomeReport, topics.OUTCOME_REPORTS, self._on_outcome_report, qos.UPDATES,
                                     callback_group=self.group),
            self.create_subscription(SitePartialSum, topics.SITE_PARTIAL_SUMS, self._on_site_sum, qos.UPDATES,
                                     callback_group=self.group),
            self.create_service(TriggerRound, topics.TRIGGER_ROUND, self._on_trigger, callback_group=self.group),
            self.create_service(RevokeRobot, topics.REVOKE_ROBOT, self._on_revoke, callback_group=self.group),
            self.create_timer(0.5, self._tick, callback_group=self.group),
            self.create_timer(1.0, self._publish_status, callback_group=self.group),
            ActionServer(self, RunRound, topics.RUN_ROUND, self._run_round_action, callback_group=self.group),
        ]
        self._publish_model(self.core.model, 'deploy', [])
        if self.core.current is not None:
            self._publish_round(self.core.current.config)
        if self.gate_settings.round_period_s > 0:
            self.next_round_at = time.monotonic() + self.gate_settings.first_round_delay_s
        self.activated_at = time.monotonic()
        self.get_logger().info('active')
        return result

    def _apply_round_settings(self, settings: AggregatorSettings) -> None:
        """`ros2 param set` of a writable round parameter: used from the next round it concerns."""
        with self.lock:
            self.round_settings = settings
            if self.core is not None:
                self.core.settings = settings

    def _apply_gate_settings(self, settings: GateSettings) -> None:
        """`ros2 param set` of a writable gate or schedule parameter; a new round period restarts the clock."""
        with self.lock:
            rescheduled = settings.round_period_s != self.gate_settings.round_period_s
            self.gate_settings = self.gate.settings = settings
            if rescheduled and self.handles:
                self.next_round_at = (time.monotonic() + settings.round_period_s if settings.round_period_s > 0
                                      else math.inf)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.next_round_at = math.inf
        destroy_entities(self, self.handles)
        self.get_logger().info('inactive: no updates, requests or rounds until activated again')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.handles)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Undo on_configure: wait for a round being closed, then drop the publishers, clients and core."""
        if self.worker is not None:
            self.worker.shutdown(wait=True)
            self.worker = None
        destroy_entities(self, self.interfaces)
        self.core = self.kms_check = self.round_log = self.held_out = self.outcomes = None

    # Publishing.
    def _publish_round(self, config) -> None:
        msg = RoundConfig(round_id=config.round_id, model_version=config.model_version,
                          security_level=config.security_level, ring_degree=config.ring_degree,
                          modulus_bits=config.modulus_bits, plaintext_bits=config.plaintext_bits,
                          clipping_norm=config.clipping_norm, noise_variance=config.noise_mu,
                          min_clients=config.min_clients, num_coordinates=config.num_coordinates,
                          total_coordinates=config.total_coordinates, quorum=config.quorum,
                          aggregator_key_id=config.aggregator_key_id, package=config.serialize())
        msg.round_seed = list(config.round_seed)
        msg.deadline.sec = int(config.deadline)
        msg.deadline.nanosec = int((config.deadline % 1) * 1e9)
        self.config_pub.publish(msg)

    def _publish_model(self, model, rollout: str, targets: list[str]) -> None:
        msg = ModelUpdate(model_version=model.model_version, parent_version=model.parent_version,
                          round_id=model.round_id, rollout=rollout, target_robots=targets,
                          package=model.serialize())
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.parameters_sha256 = list(model.parameters_sha256)
        self.model_pub.publish(msg)

    def _publish_status(self) -> None:
        """Every second: check the key service is reachable and publish FleetStatus; never raises."""
        try:
            self._probe_key_service()
            self._publish_fleet_status()
        except Exception as exc:  # noqa: BLE001 - last resort: a timer must not take the server down.
            self._internal_error('status', exc)
        else:
            self.health.clear('status')

    def _probe_key_service(self) -> None:
        if self.key_service.service_is_ready() and self.round_keys.service_is_ready():
            self.health.clear('key_service')
        elif time.monotonic() - self.activated_at > KEY_SERVICE_GRACE_S:
            self.health.fault('key_service', f'key service unreachable: {topics.DECRYPT_AGGREGATE} or '
                                             f'{topics.ISSUE_ROUND_KEY} has no server')

    def _publish_fleet_status(self) -> None:
        """FleetStatus; while the KMS does not verify it carries the last verified roster."""
        with self.lock:
            current = self.core.current
            try:
                kms = self.core.kms
                robots = sorted(r.metadata.key_id for r in kms.list_keys() if r.metadata.role.value == 'robot')
                self.roster = ([r for r in robots if not kms.is_revoked(r)], [r for r in robots if kms.is_revoked(r)])
            except STATE_ERRORS as exc:
                self._state_fault(exc)
            msg = FleetStatus(
                round_id=current.config.round_id if current else self.core.model.round_id,
                phase=self.phase, model_version=self.core.model.model_version,
                quorum=current.config.quorum if current else self.round_settings.quorum,
                participants=current.contributors if current else [],
                enrolled_robots=self.roster[0], revoked_robots=self.roster[1],
                rejections=[RejectionCount(reason=r, count=c) for r, c in sorted(self.health.refusals().items())],
                last_success_rate=self.last['success_rate'], last_success_lower_bound=self.last['lower_bound'],
                deployed_success_rate=math.nan if self.gate.deployed_success is None else self.gate.deployed_success,
                last_gate_decision=self.last['decision'])
            on_robot = self.outcomes.for_version(self.core.model.model_version,
                                                 max_episodes_per_robot=self.gate_settings.canary_max_episodes_per_robot)
            msg.on_robot_episodes, msg.on_robot_successes = on_robot.episodes, on_robot.successes
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    # Updates.
    def _on_update(self, msg: EncryptedUpdate) -> None:
        """Verify one update and add it to the round; every refusal is counted by reason.

        The header's ids are unauthenticated: they must equal the signed package's, and refusals
        name them only as claimed."""
        blob = bytes(msg.package)
        claimed = f'claimed {msg.robot_id!r}, round {msg.round_id}'
        if not package_intact(msg):
            self._reject('transport_digest_mismatch', claimed)
            return
        try:
            unverified = decode(UpdatePackage, blob)
        except VerificationError as exc:
            self._reject(exc.reason, f'{claimed}: {exc}')
            return
        if (unverified.robot_id, unverified.round_id) != (msg.robot_id, msg.round_id):
            self._reject('header_mismatch', f'{claimed}; its package claims {unverified.robot_id!r}, '
                                            f'round {unverified.round_id}')
            return
        with self.lock:
            try:
                self._check_kms()
                if self.core.current is None or self.closing:
                    self._reject(self.core.classify_stray(blob), f'{claimed}: no round open')
                    return
                package = self.core.accept(blob)
            except (VerificationError, RoundError) as exc:
                self._reject(exc.reason, f'{claimed}: {exc}')
                return
            except STATE_ERRORS as exc:
                self._reject(self._state_fault(exc), f'{claimed}: refused while the server state is bad')
                return
            self.health.clear('storage')
            count = len(self.core.current.contributors)
        self.get_logger().info(f'round {package.round_id}: accepted {package.robot_id} ({count} so far)')

    def _on_site_sum(self, msg: SitePartialSum) -> None:
        """Verify one site's partial sum and add it for all its robots; every refusal is counted by reason."""
        blob = bytes(msg.package)
        claimed = f'claimed site {msg.site_id!r}, round {msg.round_id}'
        if not package_intact(msg):
            self._reject('transport_digest_mismatch', claimed, 'site sum')
            return
        with self.lock:
            try:
                self._check_kms()
                unverified = decode(SitePartialSumRecord, blob)
                if (unverified.site_id, unverified.round_id) != (msg.site_id, msg.round_id):
                    self._reject('header_mismatch', f'{claimed}; its package claims {unverified.site_id!r}, '
                                                    f'round {unverified.round_id}', 'site sum')
                    return
                if self.closing:
                    raise RoundError('the round is closing', reason='no_open_round')
                record = self.core.accept_site_sum(blob)
            except (VerificationError, RoundError) as exc:
                self._reject(exc.reason, f'{claimed}: {exc}', 'site sum')
                return
            except STATE_ERRORS as exc:
                self._reject(self._state_fault(exc), f'{claimed}: refused while the server state is bad', 'site sum')
                return
            self.health.clear('storage')
            count = len(self.core.current.contributors)
        robots = [c.robot_id for c in record.contributions]
        self.get_logger().info(f'round {record.round_id}: accepted the sum of site {record.site_id} over {robots} '
                               f'({count} robots so far)')

    def _on_outcome_report(self, msg: OutcomeReport) -> None:
        """Verify and tally one robot's outcome report; a refusal is counted by reason."""
        blob = bytes(msg.package)
        claimed = f'claimed {msg.robot_id!r}'
        try:
            if decode(OutcomeReportRecord, blob).robot_id != msg.robot_id:
                self._reject('header_mismatch', f'{claimed}: the signed report names another robot', 'outcome report')
                return
            with self.lock:
                self._check_kms()
                report = self.outcomes.accept(blob, self.core.kms, self.core.model.model_version)
                self.outcome_arrived.notify_all()
        except VerificationError as exc:
            self._reject(exc.reason, f'{claimed}: {exc}', 'outcome report')
            return
        except STATE_ERRORS as exc:
            self._reject(self._state_fault(exc), f'{claimed}: refused while the server state is bad', 'outcome report')
            return
        self.get_logger().debug(f'{report.robot_id}: model {report.model_version} '
                                f'{report.successes}/{report.episodes} on the robot')

    def _await_canary_outcomes(self, version: int, robots: list[str]) -> VersionOutcomes:
        """Wait (at most `canary_window_s`) until the canary robots reported enough episodes of `version`."""
        settings = self.gate_settings
        deadline = time.monotonic() + settings.canary_window_s
        with self.lock:
            while True:
                outcomes = self.outcomes.for_version(version, robots, settings.canary_max_episodes_per_robot)
                remaining = deadline - time.monotonic()
                if outcomes.episodes >= settings.canary_min_episodes or remaining <= 0:
                    return outcomes
                self.outcome_arrived.wait(timeout=min(remaining, 1.0))

    def _reject(self, reason: str, detail: str, what: str = 'update') -> None:
        self.health.refuse(reason)
        self.get_logger().warning(f'refused {what} ({reason}): {detail}')

    # Health.
    def _check_kms(self) -> None:
        """Re-verify the KMS audit log and state file if they changed; raises `KMSError` while they do not verify."""
        try:
            self.kms_check()
        except KMSError as exc:
            self._state_fault(exc)
            raise
        self.health.clear('kms')

    def _state_fault(self, exc: Exception) -> str:
        """Record a bad-state error (one of `STATE_ERRORS`) as a fault; returns its refusal reason."""
        if isinstance(exc, OSError):
            self.health.fault('storage', f'fleet directory {self.core.paths.server} unusable: {exc}')
            return 'storage_error'
        self.health.fault('kms', f'KMS audit log or state file unusable ({exc.reason}): {exc}')
        return exc.reason

    def _refuse_request(self, what: str, exc: Exception) -> str:
        """Count and log a request refused for a bad state (one of `STATE_ERRORS`); returns the reply text."""
        reason = self._state_fault(exc)
        self.health.refuse(reason)
        self.get_logger().warning(f'refused {what} ({reason})')
        return f'{reason}: {exc}'

    def _internal_error(self, callback: str, exc: Exception) -> None:
        """Last resort of a timer callback: count `internal_error`, report its type until it succeeds again."""
        self.health.refuse('internal_error')
        self.health.fault(callback, f'{callback} failed: {type(exc).__name__}: {exc}')

    def _diagnostic_values(self) -> dict[str, str]:
        """Key/values of the aggregator's /diagnostics status."""
        current = self.core.current if self.core is not None else None
        model = self.core.model if self.core is not None else None
        return {'phase': self.phase, 'round': str(current.config.round_id) if current else '',
                'updates': str(len(current.contributors)) if current else '0',
                'model_version': str(model.model_version) if model else ''}

    # Round control.
    def _open_round(self, deadline_s: float = 0.0, quorum: int = 0) -> int:
        """Get the next round's key from the key service (without holding the lock), then announce it."""
        with self.lock:
            if self.core.current is not None:
                raise RoundError(f'round {self.core.current.config.round_id} is still open', reason='round_open')
            round_id = self.core.next_round_id()
        response = self._call_key_service(self.round_keys, IssueRoundKey.Request(round_id=round_id))
        if not response.success:
            raise RoundError(f'key service refused a key for round {round_id}: {response.message}',
                             reason=response.reason)
        with self.lock:
            config = self.core.open_round(bytes(response.announcement), deadline_s or None, quorum or None)
            self.rounds_started += 1
            self.phase = 'collecting'
        self._publish_round(config)
        self.get_logger().info(f'round {config.round_id} open: model {config.model_version}, '
                               f'quorum {config.quorum}, deadline in {config.deadline - time.time():.0f} s')
        return config.round_id

    def _tick(self) -> None:
        """Every 0.5 s: re-verify the KMS, record a pending outcome, open or close rounds as due.

        A bad state stops rounds from advancing and is reported on /diagnostics; it never raises."""
        try:
            self._check_kms()
            if self.unrecorded is not None:
                self._finish(self.unrecorded)
            else:
                self._advance_rounds()
        except STATE_ERRORS as exc:
            self._state_fault(exc)
        except Exception as exc:  # noqa: BLE001 - last resort: a timer must not take the server down.
            self._internal_error('tick', exc)
        else:
            self.health.clear('tick')

    def _advance_rounds(self) -> None:
        with self.lock:
            if self.core.current is None:
                limit = self.gate_settings.max_rounds
                due = time.monotonic() >= self.next_round_at and (limit == 0 or self.rounds_started < limit)
                if due:
                    self.next_round_at = time.monotonic() + self.gate_settings.round_period_s
            else:
                due = False
        if due:
            try:
                self._open_round()
            except RoundError as exc:
                self.get_logger().error(f'automatic round not opened ({exc.reason}): {exc}')
            return
        with self.lock:
            if self.core.current is None or self.closing:
                return
            for robot in self.core.drop_revoked():
                self.get_logger().warning(f'round {self.core.current.config.round_id}: {robot} was revoked; '
                                          'its update was taken out of the sum')
            if self.core.expired():
                current = self.core.current
                round_id, received = current.config.round_id, len(current.contributors)
                self._finish({'round_id': round_id, 'outcome': 'expired_without_quorum',
                              'participants': current.contributors,
                              'detail': f'round {round_id} reached its deadline with {received} of the '
                                        f'{current.config.quorum} updates its quorum needs'})
                return
            if self.core.ready_to_close():
                self.closing = True
                self.worker.submit(self._close_round)

    def _close_round(self) -> None:
        current = self.core.current
        round_id = current.config.round_id
        outcome = {'round_id': round_id, 'participants': current.contributors}
        try:
            self.phase = 'decrypting'
            request = DecryptAggregate.Request(round_id=round_id, round_config=current.config.serialize(),
                                               request=self.core.aggregate_request())
            response = self._call_key_service(self.key_service, request)
            if not response.success:
                raise RoundError(f'key service refused: {response.message}', reason=response.reason)
            candidate = self.core.candidate(bytes(response.result))
            self.phase = 'evaluating'
            selected, selection = self.gate.select_tasks(candidate.policy, self.core.model_policy, round_id)
            candidate = replace(candidate, policy=selected)
            metrics = self.gate.evaluate(candidate.policy, round_id, self.core.model_policy, self.held_out)
            decision, failures = self.gate.decide(metrics)
            outcome.update(outcome='aggregated', decision=decision, failures=failures,
                           success_rate=metrics.success_rate, success_lower_bound=metrics.success_lower_bound,
                           eval_episodes=sum(metrics.episodes.values()), kl_divergence=metrics.kl_divergence,
                           delta_norm=candidate.delta_norm, frozen_segments=candidate.frozen_segments,
                           selection=selection)
            self.last = {'success_rate': metrics.success_rate, 'lower_bound': metrics.success_lower_bound,
                         'decision': decision}
            self.phase = 'deploying'
            if decision != 'reject':
                outcome['model_version'] = self._deploy(candidate, decision, outcome)
            outcome['deployed_success_rate'] = self.gate.settle(decision, metrics,
                                                                outcome.get('canary_promoted', False))
        except (RoundError, VerificationError) as exc:
            outcome.update(outcome='failed', reason=exc.reason, detail=str(exc))
            self.get_logger().error(f'round {round_id} failed: {exc}')
        except STATE_ERRORS as exc:
            outcome.update(outcome='failed', reason=self._state_fault(exc), detail=str(exc))
            self.get_logger().error(f'round {round_id} failed: {exc}')
        except Exception as exc:  # noqa: BLE001 - a failed round must not take the server down.
            outcome.update(outcome='failed', reason='error', detail=f'{type(exc).__name__}: {exc}')
            self.get_logger().error(f'round {round_id} failed: {type(exc).__name__}: {exc}')
        self._finish(outcome)

    def _deploy(self, candidate, decision: str, outcome: dict) -> int:
        """Publish the candidate: straight to everyone, or first to a canary subset.

        A canary model goes to ``canary_percentage`` of the robots while the evaluator runs a
        second, independent trial (fresh simulator seeds); only if that trial also passes the gate
        is the model promoted to the whole fleet, otherwise the parent model is re-issued as a new
        version (rollback), so every robot ends the round on one version.
        """
        if decision == 'canary':
            canary = self.gate_settings.canary_robots(self.core.expected_robots())
            parent_policy, parent_version = self.core.model_policy, self.core.model.model_version
            model = self.core.publish_model(candidate.policy, candidate.round_id, 'canary')
            self._publish_model(model, 'canary', canary)
            self.get_logger().info(f'model {model.model_version} to canary robots {canary}')
            trial = self.gate.evaluate(candidate.policy, candidate.round_id, parent_policy, self.held_out,
                                       canary_trial=True)
            on_robot = fleet_on_robot = None
            if self.gate_settings.canary_min_episodes:
                self.phase = 'canary'
                on_robot = self._await_canary_outcomes(model.model_version, canary)
                fleet_on_robot = self.outcomes.for_version(
                    parent_version, max_episodes_per_robot=self.gate_settings.canary_max_episodes_per_robot)
                outcome.update(canary_on_robot_episodes=on_robot.episodes,
                               canary_on_robot_successes=on_robot.successes)
                self.phase = 'deploying'
            promoted, failures = self.gate.promote(trial, on_robot, fleet_on_robot)
            outcome.update(canary_robots=canary, canary_success_rate=trial.success_rate,
                           canary_promoted=promoted, canary_failures=failures)
            if not promoted:
                model = self.core.publish_model(parent_policy, candidate.round_id, 'rollback')
                self._publish_model(model, 'deploy', [])
                self.get_logger().warning(f'canary not promoted ({"; ".join(failures)}): rolled back as '
                                          f'model {model.model_version}')
                return model.model_version
        model = self.core.publish_model(candidate.policy, candidate.round_id, 'deploy')
        self._publish_model(model, 'deploy', [])
        self.get_logger().info(f'model {model.model_version} deployed to the fleet')
        return model.model_version

    def _call_key_service(self, client, request):
        """Call one of the key service's services from a worker or callback thread and wait for it."""
        if not client.wait_for_service(timeout_sec=30.0):
            raise RoundError('the key service did not answer within 30 s', reason='key_service_unavailable')
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout=120.0):
            raise RoundError('no answer from the key service within 120 s', reason='key_service_timeout')
        return future.result()

    def _finish(self, outcome: dict) -> None:
        """Record a round's outcome and close it; if the disk refuses, the tick retries (`unrecorded`)."""
        with self.lock:
            outcome.setdefault('closed_at', time.time())
            try:
                current = self.core.current
                if current is not None and current.config.round_id == outcome['round_id']:
                    self.core.close_round(outcome)
                self.round_log.append(outcome)
            except OSError as exc:
                self.unrecorded = outcome
                self._state_fault(exc)
                return
            self.unrecorded = None
            self.health.clear('storage')
            self.health.clear('stored_state')
            self.phase = 'idle'
            self.closing = False
            self.round_closed.notify_all()
        self.get_logger().info(f"round {outcome['round_id']} closed: {outcome.get('outcome')} "
                               f"{outcome.get('decision', '')}")

    # Services and action.
    def _on_trigger(self, request, response):
        try:
            self._check_kms()
            response.round_id = self._open_round(request.deadline_seconds)
            response.accepted = True
            response.message = 'round opened'
        except RoundError as exc:
            response.accepted = False
            response.message = str(exc)
        except STATE_ERRORS as exc:
            response.accepted = False
            response.message = self._refuse_request('TriggerRound', exc)
        return response

    def _on_revoke(self, request, response):
        try:
            self._check_kms()
        except STATE_ERRORS as exc:
            response.success = False
            response.message = self._refuse_request('RevokeRobot', exc)
            return response
        try:
            with self.lock:
                self.core.kms.revoke_key(request.robot_id, request.reason or 'revoked by operator')
            response.success = True
            response.message = f'{request.robot_id} revoked'
            self.get_logger().warning(f'revoked {request.robot_id}: {request.reason}')
        except KMSError as exc:  # unknown or already revoked robot, over-long reason
            response.success = False
            response.message = f'{exc.reason}: {exc}'
        return response

    def _run_round_action(self, goal_handle):
        try:
            self._check_kms()
            round_id = self._open_round(goal_handle.request.deadline_seconds, goal_handle.request.quorum)
        except RoundError as exc:
            goal_handle.abort()
            return RunRound.Result(success=False, message=str(exc))
        except STATE_ERRORS as exc:
            goal_handle.abort()
            return RunRound.Result(success=False, message=self._refuse_request('RunRound', exc))
        feedback = RunRound.Feedback()
        with self.lock:
            while self.core.current is not None and self.core.current.config.round_id == round_id:
                current = self.core.current
                feedback.phase = self.phase
                feedback.updates_received = len(current.contributors)
                feedback.quorum = current.config.quorum
                feedback.seconds_remaining = max(0.0, current.config.deadline - time.time())
                goal_handle.publish_feedback(feedback)
                self.round_closed.wait(timeout=1.0)
        try:
            outcome = self.round_log.outcome(round_id)
        except (OSError, ValueError) as exc:  # unreadable or corrupt round log
            self.get_logger().error(f'round {round_id}: outcome unreadable: {type(exc).__name__}: {exc}')
            outcome = {'detail': f'round {round_id} closed, but its outcome is unreadable: {exc}'}
        if outcome.get('outcome') == 'aggregated':
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return RunRound.Result(success=outcome.get('outcome') == 'aggregated', round_id=round_id,
                               model_version=self.core.model.model_version,
                               gate_decision=outcome.get('decision', ''),
                               participants=outcome.get('participants', []),
                               message=outcome.get('detail', ''))


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_aggregator aggregator``."""
    return spin_node(AggregatorNode, args, threads=4)


if __name__ == '__main__':
    sys.exit(main())
