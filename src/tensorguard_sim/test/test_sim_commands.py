"""The simulated arm reads the policy node's JointTrajectory commands by joint name, clips them as the
server's evaluation clips actions, and refuses malformed ones with the reason; without an action its
frame has no command message (the policy node commands)."""
import math

import numpy as np
import pytest
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from tensorguard_sim.sim_robot import ACTION_JOINTS, arm_messages, command_action


def command(joints, *points) -> JointTrajectory:
    return JointTrajectory(joint_names=list(joints), points=[JointTrajectoryPoint(positions=list(p)) for p in points])


def test_a_command_is_read_by_joint_name_and_clipped():
    action = command_action(command(['grip', 'z', 'y', 'x'], [0.5, 2.0, -0.25, -3.0]))
    np.testing.assert_array_equal(action, [-1.0, -0.25, 1.0, 0.5])


@pytest.mark.parametrize('msg, message', [
    (command(['x', 'y', 'z'], [0.0, 0.0, 0.0]), "command joints ['x', 'y', 'z'] are not"),
    (command(ACTION_JOINTS), 'a command needs one point with 4 positions'),
    (command(ACTION_JOINTS, [0.0] * 4, [0.0] * 4), 'a command needs one point with 4 positions'),
    (command(ACTION_JOINTS, [0.0] * 3), 'a command needs one point with 4 positions'),
    (command(ACTION_JOINTS, [0.0, math.nan, 0.0, 0.0]), 'is not finite'),
])
def test_a_malformed_command_is_refused_with_what_is_wrong(msg, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        command_action(msg)


def test_a_frame_without_an_action_has_no_command():
    assert 'command' in arm_messages(np.zeros(39), np.zeros(4), 0)
    assert set(arm_messages(np.zeros(39), None, 0)) == {'ee_pose', 'gripper', 'object_pose', 'object2_pose', 'goal'}
