"""Writing rosbag2 bags in tests, as `ros2 bag record` would: serialized messages written with the
`rosbags` writer (the edge package's bag tests and the top-level DDS test share it)."""
from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from tensorguard_edge.bag_import import MARKER_TYPE


def write_bag(path: Path, plugin: StoragePlugin, messages: list[tuple[str, int, bytes]],
              types: dict[str, str]) -> None:
    """A rosbag2 bag of serialized messages (topic, log time, CDR bytes) in log-time order; `types`
    names each topic's message type (standard types from the Kilted type store, EpisodeMarker from
    the installed tensorguard_msgs definition)."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    msg_file = Path(get_package_share_directory('tensorguard_msgs')) / 'msg' / 'EpisodeMarker.msg'
    typestore.register(get_types_from_msg(msg_file.read_text(), MARKER_TYPE))
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {topic: writer.add_connection(topic, type_name, typestore=typestore)
                       for topic, type_name in types.items()}
        for topic, log_time, raw in sorted(messages, key=lambda m: m[1]):
            writer.write(connections[topic], log_time, raw)
