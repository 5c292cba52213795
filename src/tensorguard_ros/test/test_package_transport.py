"""The transport fields of a package-carrying message: what the sender fills, the receiver accepts;
a package cut short, extended or changed in one byte on the way is not intact."""
from builtin_interfaces.msg import Time
from hypothesis import given
from hypothesis import strategies as st

from tensorguard_msgs.msg import EncryptedUpdate, SitePartialSum
from tensorguard_ros.package_transport import carry_package, package_intact


@given(st.binary(min_size=1, max_size=4096), st.data())
def test_a_carried_package_is_intact_and_any_change_on_the_way_is_not(blob, data):
    msg = carry_package(EncryptedUpdate(robot_id='robot_1', round_id=3), blob)
    assert (bytes(msg.package), msg.package_size, msg.robot_id) == (blob, len(blob), 'robot_1')
    assert package_intact(msg)

    position = data.draw(st.integers(0, len(blob) - 1))
    flipped = bytearray(blob)
    flipped[position] ^= data.draw(st.integers(1, 255))
    for damaged in (bytes(flipped), blob[:-1], blob + b'\0'):
        msg.package = damaged
        assert not package_intact(msg)


def test_the_stamp_is_set_only_when_given():
    msg = carry_package(SitePartialSum(site_id='site_a', round_id=1), b'sum')
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
    stamped = carry_package(SitePartialSum(), b'sum', Time(sec=5, nanosec=7))
    assert (stamped.header.stamp.sec, stamped.header.stamp.nanosec) == (5, 7)
