"""Operator commands of a robot's demonstrations, sub-commands of ``tensorguard`` (entry-point group
``tensorguard.commands``): ``tensorguard robot-import-bag`` and ``tensorguard robot-export-dataset``.

Exit codes: 0 success, 2 usage error, 3 the robot's key file cannot be opened, 8 a bag, store or
dataset refused (one ``error:`` line saying what is wrong, never a traceback).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tensorguard_crypto.keystore import KeyStoreError
from tensorguard_learning.demonstrations import LOG_NAME, DemonstrationStore
from tensorguard_learning.errors import LearningError

EXIT_OK, EXIT_USAGE, EXIT_KEY_FILE, EXIT_DATA = 0, 2, 3, 8
EDGE_NODE = 'edge_node'


class CommandError(Exception):
    """An operator-facing failure with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_DATA) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _namespace(text: str) -> str:
    """argparse type: a robot namespace such as /robot_1."""
    if not text.startswith('/') or text.endswith('/') and text != '/':
        raise argparse.ArgumentTypeError(f'{text!r} is not an absolute namespace such as /robot_1')
    return text


def _fps(text: str) -> int:
    """argparse type: frames per second, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of frames per second >= 1')
    return int(text)


def _run(handler, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(list(argv))
    try:
        handler(args)
    except CommandError as error:
        print(f'error: {error}', file=sys.stderr)
        return error.exit_code
    except KeyStoreError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_KEY_FILE
    except (LearningError, ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_DATA
    return EXIT_OK


def _import_bags(args: argparse.Namespace) -> None:
    from tensorguard_edge.bag_import import ImportSummary, import_bag
    from tensorguard_edge.client import EdgeClient, EdgeSettings
    from tensorguard_edge.streams import StreamMapping
    from tensorguard_ros.params import parameters_from_file

    if not args.params.is_file():
        raise CommandError(f'{args.params}: no such parameter file', EXIT_USAGE)
    node = f'{args.namespace.rstrip("/")}/{EDGE_NODE}'
    values = parameters_from_file(args.params, node)
    mapping = StreamMapping.from_parameters(values)
    settings = EdgeSettings(**{k: v for k, v in values.items() if k in EdgeSettings.__dataclass_fields__})
    if args.state_dir is not None:
        settings.state_dir = str(args.state_dir)
    client = EdgeClient(settings)
    summary = ImportSummary()
    try:
        for bag in args.bags:
            import_bag(bag, mapping, args.namespace, client.add_demonstration, settings.state_dim,
                       settings.action_dim, summary, progress=not args.quiet)
    finally:
        print('\n'.join(summary.lines()))
        print(f'store {client.store.directory}: {client.store.count()} episodes, {client.store.total_frames()} frames')
        client.close()


def import_bag_command(argv: Sequence[str], prog: str = 'tensorguard robot-import-bag') -> int:
    """``tensorguard robot-import-bag``: demonstrations from rosbag2 bags into a robot's store."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Import demonstrations from rosbag2 recordings (MCAP or sqlite3) into a robot's "
        "demonstration store, with the stream mapping (inputs.*) of the robot's own parameter file and the episode "
        "markers recorded in the bag, through the same alignment as live recording. Stop the robot's edge node "
        'first (it holds the store). The robot key passphrase comes from TENSORGUARD_KEY_PASSPHRASE.')
    parser.add_argument('bags', type=Path, nargs='+', help='bag directories (with metadata.yaml), imported in order')
    parser.add_argument('--params', type=Path, required=True, help="the robot's parameter file (as its edge node uses)")
    parser.add_argument('--namespace', type=_namespace, required=True,
                        help='robot namespace the bag was recorded under, e.g. /robot_1 (its edge node is '
                             f'<namespace>/{EDGE_NODE})')
    parser.add_argument('--state-dir', type=Path, help="store into this state directory instead of the file's "
                                                       'state_dir')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return _run(_import_bags, parser, argv)


def _export(args: argparse.Namespace) -> None:
    from tensorguard_edge.dataset_export import export_demonstrations

    demos = args.state_dir / 'demos'
    if not (demos / LOG_NAME).is_file():
        raise CommandError(f'{args.state_dir}: no demonstration store (expected {demos / LOG_NAME})')
    with DemonstrationStore(demos, max_bytes=1 << 50, when_full='refuse') as store:
        summary = export_demonstrations(store.iter_episodes(), args.out_dir, args.fps, args.robot_type)
    print(f'exported {summary.episodes} episodes ({summary.frames} frames, tasks: {", ".join(summary.tasks)}) '
          f'to {summary.root} (LeRobot dataset v3.0)')
    if summary.cameras_not_exported:
        print(f'not exported: camera frames of {", ".join(summary.cameras_not_exported)}')


def export_dataset_command(argv: Sequence[str], prog: str = 'tensorguard robot-export-dataset') -> int:
    """``tensorguard robot-export-dataset``: a robot's store as a LeRobot v3.0 dataset."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a robot's demonstration store to LeRobot's dataset layout v3.0 (meta/info.json, "
        'meta/tasks.parquet, meta/episodes and data parquet files): observation.state, action, timestamp and the '
        'indices; camera frames are not exported. docs/datasets.md describes the layout.')
    parser.add_argument('state_dir', type=Path, help="the robot's state_dir (holding demos/)")
    parser.add_argument('out_dir', type=Path, help='new or empty directory for the dataset')
    parser.add_argument('--fps', type=_fps, required=True, help='frames per second the episodes were recorded at')
    parser.add_argument('--robot-type', help='robot_type recorded in meta/info.json')
    return _run(_export, parser, argv)
