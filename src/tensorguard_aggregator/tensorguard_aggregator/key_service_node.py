"""The key service's node: serves ``IssueRoundKey`` and ``DecryptAggregate`` in its own process, nothing else.

A thin shell around `KeyServiceCore`; it never subscribes to updates, so it never sees an
individual robot's body. Refusals are answered with a reason and counted; the node keeps running.
It re-verifies the KMS every second and before each decryption: while the audit log or state file
does not verify it refuses and reports ERROR on ``/diagnostics``, and recovers once they do.
"""
from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from tensorguard_aggregator.key_service import DecryptionRefused, KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.kms_check import KMSCheck
from tensorguard_crypto.fleet import passphrase_from_environment
from tensorguard_crypto.kms import KMSError
from tensorguard_crypto.refusal import Reason, reason_of
from tensorguard_msgs.srv import DecryptAggregate, IssueRoundKey
from tensorguard_ros import topics
from tensorguard_ros.diagnostics import DiagnosticsPublisher, Health
from tensorguard_ros.node_main import destroy_entities, enable_autostart, spin_node
from tensorguard_ros.params import declare_dataclass_parameters


class KeyServiceNode(LifecycleNode):
    """Lifecycle node owning the `KeyServiceCore`."""

    def __init__(self) -> None:
        super().__init__('key_service')
        self.settings = declare_dataclass_parameters(self, KeyServiceSettings)
        self.core: KeyServiceCore | None = None
        self.kms_check: KMSCheck | None = None
        self.probe_timer = None
        self.handles = []  # the two services, while active
        self.decryptions = 0
        self.health = Health(self.get_logger())
        self.diagnostics = DiagnosticsPublisher(self, self.health, self.settings.fleet_dir, self._diagnostic_values)
        enable_autostart(self)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core = KeyServiceCore(self.settings, passphrase_from_environment())
        except Exception as exc:  # noqa: BLE001 - start-up failures are reported and refused.
            self.health.fault('configure', f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.health.clear('configure')
        self.kms_check = KMSCheck(self.core.kms)
        self.probe_timer = self.create_timer(1.0, self._probe)
        self.get_logger().info(f'configured: decrypts aggregates of at least {self.settings.min_quorum} robots')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.handles = [self.create_service(DecryptAggregate, topics.DECRYPT_AGGREGATE, self._on_request),
                         self.create_service(IssueRoundKey, topics.ISSUE_ROUND_KEY, self._on_round_key)]
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.handles)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.handles)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Undo on_configure: stop probing the KMS and drop the core."""
        if self.probe_timer is not None:
            self.destroy_timer(self.probe_timer)
            self.probe_timer = None
        self.core = self.kms_check = None

    def _on_round_key(self, request, response):
        try:
            response.announcement = self.core.round_key(request.round_id)
        except DecryptionRefused as exc:
            self.health.refuse(exc.reason)
            response.success, response.reason, response.message = False, exc.reason, str(exc)
            self.get_logger().warning(f'refused a key for round {request.round_id} ({exc.reason}): {exc}')
            return response
        response.success = True
        self.get_logger().info(f'issued the lattice key of round {request.round_id}')
        return response

    def _on_request(self, request, response):
        try:
            self._check_kms()
            result, contributors = self.core.decrypt(bytes(request.round_config), bytes(request.request))
        except DecryptionRefused as exc:
            self.health.refuse(exc.reason)
            response.success, response.reason, response.message = False, exc.reason, str(exc)
            self.get_logger().warning(f'refused round {request.round_id} ({exc.reason}): {exc}')
            return response
        self.decryptions += 1
        response.success, response.contributors, response.result = True, contributors, result
        self.get_logger().info(f'decrypted round {request.round_id}: aggregate of {contributors} robots')
        return response

    def _check_kms(self) -> None:
        """Re-verify the KMS audit log and state file if they changed; the 'kms' condition follows the
        result; raises `DecryptionRefused` while they do not verify."""
        try:
            self.kms_check()
        except KMSError as exc:
            self.health.fault('kms', f'KMS audit log or state file unusable ({exc.reason}): {exc}')
            raise DecryptionRefused(f'the KMS cannot be used: {exc}',
                                    reason=reason_of(exc.reason, Reason.KMS_ERROR)) from None
        self.health.clear('kms')

    def _probe(self) -> None:
        """Every second while configured: re-verify the KMS, so /diagnostics shows a bad state before a
        request meets it."""
        try:
            self._check_kms()
        except DecryptionRefused:
            return  # reported as the 'kms' condition
        except Exception as exc:  # noqa: BLE001 - last resort: a timer must not take the key service down.
            self.health.refuse('internal_error')
            self.health.fault('probe', f'probe failed: {type(exc).__name__}: {exc}')
            return
        self.health.clear('probe')

    def _diagnostic_values(self) -> dict[str, str]:
        """Key/values of the key service's /diagnostics status."""
        return {'configured': str(self.core is not None), 'decryptions': str(self.decryptions),
                'min_quorum': str(self.settings.min_quorum)}


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_aggregator key_service``."""
    return spin_node(KeyServiceNode, args)


if __name__ == '__main__':
    sys.exit(main())
