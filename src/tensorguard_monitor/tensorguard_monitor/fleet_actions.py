"""Operator actions on the fleet server, non-blocking: run a round (``RunRound``), revoke a robot (``RevokeRobot``).

`FleetActions` creates its action and service client on an existing node. Every call returns at
once; callbacks run later on the executor spinning that node (marshal to a GUI or asyncio thread
yourself). With a `FleetState` each action is also recorded in the model (`FleetState.action_started`
and the ``apply_*`` methods), so every view shows it and its outcome.
"""
from __future__ import annotations

from collections.abc import Callable

from rclpy.action import ActionClient
from rclpy.node import Node

from tensorguard_monitor.fleet_state import FleetState, RevokeResult, RoundFeedback, RoundResult
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.srv import RevokeRobot
from tensorguard_ros import topics

FeedbackCallback = Callable[[RoundFeedback], None]
RoundDone = Callable[[RoundResult], None]
RevokeDone = Callable[[RevokeResult], None]


class FleetActions:
    """``RunRound`` and ``RevokeRobot`` clients on `node` (see module docstring)."""

    def __init__(self, node: Node, state: FleetState | None = None) -> None:
        self.node = node
        self.state = state
        self._run_round = ActionClient(node, RunRound, topics.RUN_ROUND)
        self._revoke = node.create_client(RevokeRobot, topics.REVOKE_ROBOT)

    def server_ready(self) -> bool:
        """True when the aggregator's ``RunRound`` action server and ``RevokeRobot`` service are discovered."""
        return self._run_round.server_is_ready() and self._revoke.service_is_ready()

    def run_round(self, on_feedback: FeedbackCallback | None = None, on_done: RoundDone | None = None,
                  deadline_seconds: float = 0.0, quorum: int = 0) -> int:
        """Send a ``RunRound`` goal (0: the server's configured deadline / quorum); returns the action id
        in the model (0 without one). `on_feedback` gets every feedback, `on_done` the result once; a
        server that is not up or refuses the goal ends it with ``accepted=False``."""
        action_id = self.state.action_started('run_round') if self.state else 0

        def done(result: RoundResult) -> None:
            if self.state:
                self.state.apply_round_result(action_id, result)
            if on_done:
                on_done(result)

        def feedback(message) -> None:
            update = RoundFeedback(message.feedback.phase, message.feedback.updates_received,
                                   message.feedback.quorum, message.feedback.seconds_remaining)
            if self.state:
                self.state.apply_round_feedback(action_id, update)
            if on_feedback:
                on_feedback(update)

        def finished(future) -> None:
            error = future.exception()
            if error is not None:
                done(RoundResult(accepted=True, success=False, message=f'{type(error).__name__}: {error}'))
                return
            result = future.result().result
            done(RoundResult(accepted=True, success=result.success, round_id=result.round_id,
                             model_version=result.model_version, gate_decision=result.gate_decision,
                             participants=tuple(result.participants), message=result.message))

        def answered(future) -> None:
            error = future.exception()
            handle = None if error is not None else future.result()
            if handle is None or not handle.accepted:
                done(RoundResult(accepted=False, success=False,
                                 message=f'goal refused: {error}' if error else 'the aggregator refused the goal'))
                return
            handle.get_result_async().add_done_callback(finished)

        if not self._run_round.server_is_ready():
            done(RoundResult(accepted=False, success=False, message=f'no RunRound server at {topics.RUN_ROUND}'))
            return action_id
        goal = RunRound.Goal(deadline_seconds=float(deadline_seconds), quorum=int(quorum))
        self._run_round.send_goal_async(goal, feedback_callback=feedback).add_done_callback(answered)
        return action_id

    def revoke(self, robot_id: str, reason: str, on_done: RevokeDone | None = None) -> int:
        """Call ``RevokeRobot`` for `robot_id` with `reason` (recorded in the KMS audit log); returns the
        action id in the model (0 without one). `on_done` gets the answer once."""
        action_id = self.state.action_started('revoke', robot_id) if self.state else 0

        def done(result: RevokeResult) -> None:
            if self.state:
                self.state.apply_revoke_result(action_id, result)
            if on_done:
                on_done(result)

        def answered(future) -> None:
            error = future.exception()
            if error is not None:
                done(RevokeResult(robot_id, False, f'{type(error).__name__}: {error}'))
                return
            response = future.result()
            done(RevokeResult(robot_id, response.success, response.message))

        if not self._revoke.service_is_ready():
            done(RevokeResult(robot_id, False, f'no RevokeRobot service at {topics.REVOKE_ROBOT}'))
            return action_id
        self._revoke.call_async(RevokeRobot.Request(robot_id=robot_id, reason=reason)).add_done_callback(answered)
        return action_id

    def destroy(self) -> None:
        """Destroy the action and service clients (the node stays)."""
        self._run_round.destroy()
        self.node.destroy_client(self._revoke)
