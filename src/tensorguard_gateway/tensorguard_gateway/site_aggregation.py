"""The ROS side of site-level aggregation (docs/site-aggregation.md): the `SitePartialSum` message a
site gateway publishes for the aggregator, and the one a robot's update travels in, both as the WAN
carries them (serialized ROS messages). The summing itself is ROS-free: `tensorguard_crypto.site_sum`."""
from __future__ import annotations

from tensorguard_crypto.wire import SitePartialSum as SitePartialSumRecord
from tensorguard_crypto.wire import UpdatePackage
from tensorguard_msgs.msg import EncryptedUpdate, SitePartialSum
from tensorguard_ros.package_transport import carry_package


def partial_sum_message(blob: bytes, stamp=None) -> SitePartialSum:
    """The message carrying a signed `SitePartialSum` record (`blob`), header fields filled from it."""
    record = SitePartialSumRecord.deserialize(blob)
    return carry_package(SitePartialSum(site_id=record.site_id, round_id=record.round_id), blob, stamp)


def update_message(blob: bytes, stamp=None) -> EncryptedUpdate:
    """The message a robot's edge node publishes for a signed `UpdatePackage` (`blob`)."""
    package = UpdatePackage.deserialize(blob)
    return carry_package(EncryptedUpdate(robot_id=package.robot_id, round_id=package.round_id), blob, stamp)
