"""The key service's node: serves ``DecryptAggregate`` in its own process, nothing else.

A thin shell around `KeyServiceCore`; it never subscribes to updates, so it never sees an
individual robot's body. Refusals are answered with a reason and counted; the node keeps running.
"""
from __future__ import annotations

import sys
from collections import Counter

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from tensorguard_msgs.srv import DecryptAggregate
from tensorguard_ros import topics
from tensorguard_ros.node_main import enable_autostart, spin_node
from tensorguard_ros.params import declare_dataclass_parameters

from tensorguard_aggregator.key_service import DecryptionRefused, KeyServiceCore, KeyServicePolicy
from tensorguard_aggregator.provisioning import passphrase_from_environment


class KeyServiceNode(LifecycleNode):
    """Lifecycle node owning the `KeyServiceCore`."""

    def __init__(self) -> None:
        super().__init__('key_service')
        self.policy = declare_dataclass_parameters(self, KeyServicePolicy)
        self.core: KeyServiceCore | None = None
        self.service = None
        self.refusals: Counter[str] = Counter()
        enable_autostart(self)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core = KeyServiceCore(self.policy, passphrase_from_environment())
        except Exception as exc:  # noqa: BLE001 - start-up failures are reported and refused.
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'configured: decrypts aggregates of at least {self.policy.min_quorum} robots')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.service = self.create_service(DecryptAggregate, topics.DECRYPT_AGGREGATE, self._on_request)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.service is not None:
            self.destroy_service(self.service)
            self.service = None
        return super().on_deactivate(state)

    def _on_request(self, request, response):
        try:
            result, contributors = self.core.decrypt(bytes(request.round_config), bytes(request.request))
        except DecryptionRefused as exc:
            self.refusals[exc.reason] += 1
            response.success, response.reason, response.message = False, exc.reason, str(exc)
            self.get_logger().warning(f'refused round {request.round_id} ({exc.reason}): {exc}')
            return response
        response.success, response.contributors, response.result = True, contributors, result
        self.get_logger().info(f'decrypted round {request.round_id}: aggregate of {contributors} robots')
        return response


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_aggregator key_service``."""
    return spin_node(KeyServiceNode, args)


if __name__ == '__main__':
    sys.exit(main())
