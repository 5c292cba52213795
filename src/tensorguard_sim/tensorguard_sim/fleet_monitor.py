"""Drive and watch a running fleet over ROS: wait for demonstrations, run rounds, tabulate.

Everything shown comes from what the nodes publish (``FleetStatus``, each robot's
``RobotStatus``) and from the ``RunRound`` action's result; nothing is computed on the side.
Column ``fleet`` is the server's evaluation of the deployed model; ``robot`` is the same model's
success on the robots themselves: before each round and after the last, the monitor waits until
the robots reported ``on_robot_episodes_per_round`` autonomous episodes of the deployed version
(``FleetStatus.on_robot_episodes``/``on_robot_successes``, tallied from signed outcome reports).
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future

import rclpy
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import FleetStatus, RobotStatus
from tensorguard_ros import qos, topics

HEADER = (f"{'round':>5} {'robots':>6} {'rejected':>8} {'KB/robot':>9} {'epsilon':>9} "
          f"{'success':>8} {'lower':>6} {'decision':>8} {'model':>5} {'fleet':>6} {'robot':>6} {'secs':>5}")


class FleetMonitor(Node):
    """Collects the latest status of the server and every robot."""

    def __init__(self, robot_ids: list[str]) -> None:
        super().__init__('fleet_monitor')
        self.fleet: FleetStatus | None = None
        self.robots: dict[str, RobotStatus] = {}
        self.lock = threading.Lock()
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        for robot_id in robot_ids:
            self.create_subscription(RobotStatus, f'/{robot_id}/status', self._on_robot, qos.STATUS)
        self.run_round = ActionClient(self, RunRound, topics.RUN_ROUND)

    def _on_fleet(self, msg: FleetStatus) -> None:
        with self.lock:
            self.fleet = msg

    def _on_robot(self, msg: RobotStatus) -> None:
        with self.lock:
            self.robots[msg.robot_id] = msg

    def snapshot(self) -> tuple[FleetStatus | None, dict[str, RobotStatus]]:
        """Latest messages."""
        with self.lock:
            return self.fleet, dict(self.robots)


def _wait(predicate, timeout_s: float, procs, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dead = procs.dead()
        if dead:
            raise RuntimeError(f'{", ".join(dead)} exited while waiting for {what} (see its log)')
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}')
        time.sleep(0.2)


def _rejections(fleet: FleetStatus | None) -> dict[str, int]:
    return {r.reason: r.count for r in fleet.rejections} if fleet else {}


def _on_robot(monitor: FleetMonitor, plan, procs, version: int) -> dict | None:
    """Wait until the fleet runs model `version` (0: whichever it runs) and the robots reported
    `plan.on_robot_episodes_per_round` episodes of it; its tally (None when the plan awaits none)."""
    wanted = plan.on_robot_episodes_per_round
    if not wanted:
        return None
    version, started = version or monitor.snapshot()[0].model_version, time.monotonic()

    def reported() -> bool:
        fleet = monitor.snapshot()[0]
        return fleet.model_version == version and fleet.on_robot_episodes >= wanted

    _wait(reported, plan.on_robot_timeout_s, procs,
          f'the robots to report {wanted} autonomous episodes of model {version} (is every policy node enabled, '
          "with a model? see the robots' sim and policy logs)")
    fleet = monitor.snapshot()[0]
    return {'model_version': fleet.model_version, 'episodes': fleet.on_robot_episodes,
            'successes': fleet.on_robot_successes, 'success_rate': fleet.on_robot_successes / fleet.on_robot_episodes,
            'waited_s': round(time.monotonic() - started, 1)}


def run_rounds(plan, procs, log, baseline: Future | None = None) -> dict:
    """Run `plan.rounds` rounds through the RunRound action; return the report.

    `baseline` (optional) resolves to the round-0 row: the initial model's evaluation.
    """
    robot_ids = [plan.robot_id(i) for i in range(plan.robots)]
    rclpy.init()
    monitor = FleetMonitor(robot_ids)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(monitor)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    report = {'robots': robot_ids, 'rounds': [], 'completed': False}
    try:
        budget = plan.timeout_s
        _wait(lambda: len(monitor.snapshot()[1]) == plan.robots and monitor.snapshot()[0] is not None,
              120, procs, 'every node to report status')
        log('all nodes up; waiting for demonstrations')
        _wait(lambda: all(s.episodes_buffered >= plan.episodes_before_first_round
                          for s in monitor.snapshot()[1].values()), 300, procs,
              f'{plan.episodes_before_first_round} episodes on every robot')
        _wait(monitor.run_round.server_is_ready, 30, procs, 'the RunRound action server')
        fleet, robots = monitor.snapshot()
        log(f'every robot holds >= {plan.episodes_before_first_round} episodes; starting {plan.rounds} rounds')
        print(HEADER, flush=True)
        if baseline is not None:
            row = baseline.result()
            report['rounds'].append({**row, 'on_robot': _on_robot(monitor, plan, procs, row['model_version'])})
            _print_row(report['rounds'][-1])
        for _ in range(plan.rounds):
            before = _rejections(monitor.snapshot()[0])
            started = time.monotonic()
            goal = monitor.run_round.send_goal_async(RunRound.Goal())
            _wait(goal.done, 30, procs, 'the aggregator to accept the round')
            result_future = goal.result().get_result_async()
            _wait(result_future.done, budget, procs, 'the round to finish')
            result = result_future.result().result
            time.sleep(1.5)  # one more status period, so every robot's figures include this round
            fleet, robots = monitor.snapshot()
            after = _rejections(fleet)
            senders = [robots[r] for r in result.participants if r in robots]
            row = {
                'round_id': result.round_id, 'participants': list(result.participants),
                'rejected': sum(after.values()) - sum(before.values()),
                'rejections_by_reason': {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)},
                'bytes_per_robot': (sum(s.last_update_bytes for s in senders) / len(senders)) if senders else 0,
                'epsilon_spent_max': max((s.epsilon_spent for s in robots.values()), default=0.0),
                'success_rate': fleet.last_success_rate if result.success else None,
                'success_lower_bound': fleet.last_success_lower_bound if result.success else None,
                'deployed_success_rate': (None if math.isnan(fleet.deployed_success_rate)
                                          else fleet.deployed_success_rate),
                'gate_decision': result.gate_decision or ('failed' if not result.success else ''),
                'model_version': result.model_version, 'seconds': round(time.monotonic() - started, 1),
                'detail': result.message,
            }
            row['on_robot'] = _on_robot(monitor, plan, procs, result.model_version)
            report['rounds'].append(row)
            _print_row(row)
        _wait(lambda: all(s.model_version == monitor.snapshot()[0].model_version
                          for s in monitor.snapshot()[1].values()), 60, procs, 'every robot to apply the model')
        fleet, robots = monitor.snapshot()
        report['final_model_version'] = fleet.model_version
        report['robot_model_versions'] = {r: s.model_version for r, s in robots.items()}
        report['robot_epsilon'] = {r: s.epsilon_spent for r, s in robots.items()}
        report['completed'] = True
    except (RuntimeError, TimeoutError) as exc:
        report['error'] = str(exc)
        log(f'FAILED: {exc}')
    finally:
        executor.shutdown()
        monitor.destroy_node()
        rclpy.try_shutdown()
    return report


def _print_row(row: dict) -> None:
    print(f"{row['round_id']:>5} {len(row['participants']):>6} {row['rejected']:>8} "
          f"{row['bytes_per_robot'] / 1024:>9.1f} {row['epsilon_spent_max']:>9.3g} "
          f"{_fmt(row['success_rate']):>8} {_fmt(row['success_lower_bound']):>6} "
          f"{row['gate_decision']:>8} {row['model_version']:>5} {_fmt(row['deployed_success_rate']):>6} "
          f"{_fmt(row['on_robot'] and row['on_robot']['success_rate']):>6} {row['seconds']:>5.0f}", flush=True)


def _fmt(value) -> str:
    return '-' if value is None else f'{value:.2f}'
