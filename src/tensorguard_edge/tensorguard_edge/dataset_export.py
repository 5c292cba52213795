"""A robot's demonstrations in LeRobot's dataset layout (LeRobotDataset v3.0), written and read with pyarrow.

The layout, as LeRobot documents it (huggingface.co/blog/lerobot-datasets-v3, "The (New) Format
Design", and the path templates and default features of ``lerobot.datasets.utils``):

    meta/info.json                                 schema: features with dtype/shape/names, fps,
                                                   totals, path templates, codebase_version "v3.0"
    meta/stats.json                                per-feature mean, std, min, max, count (normalisation)
    meta/tasks.parquet                             one row per task: the task string (the pandas index
                                                   ``task``) and its integer ``task_index``
    meta/episodes/chunk-000/file-000.parquet       one row per episode: episode_index, tasks, length, the
                                                   data file it is in and its frame range
                                                   [dataset_from_index, dataset_to_index)
    data/chunk-000/file-000.parquet                one row per frame: observation.state, action,
                                                   timestamp, frame_index, episode_index, index (global
                                                   frame number), task_index

Episodes are renumbered 0..N-1 in store order (LeRobot addresses episodes by position). Only the
vector features are exported: a store's camera frames (``observation.images.*``) are not, and the
export names the cameras it left out. ROS-free: the operator command and tests use it directly.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tensorguard_learning.demonstrations import ACTION_KEY, STATE_KEY, Demonstration

CODEBASE_VERSION = 'v3.0'
INFO_PATH = 'meta/info.json'
STATS_PATH = 'meta/stats.json'
TASKS_PATH = 'meta/tasks.parquet'
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
EPISODES_PATH = 'meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
# LeRobot's defaults: at most 1000 files per chunk directory, data files of about 100 MB. One file
# holds every frame here (a robot's store is capped far below that by store_max_mb).
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
_INDEX_COLUMNS = ('frame_index', 'episode_index', 'index', 'task_index')


class DatasetError(ValueError):
    """A dataset cannot be written or read as LeRobot v3.0 (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: where, how many episodes, frames and tasks, and cameras left out."""

    root: Path
    episodes: int
    frames: int
    tasks: tuple[str, ...]
    cameras_not_exported: tuple[str, ...]


@dataclass(frozen=True)
class LeRobotDataset:
    """A dataset read back: its info.json, its tasks by task_index, and its episodes in order."""

    info: dict
    tasks: tuple[str, ...]
    episodes: tuple[Demonstration, ...]


def _vector_feature(dim: int, name: str) -> dict:
    return {'dtype': 'float32', 'shape': [dim], 'names': [f'{name}_{i}' for i in range(dim)]}


def _scalar_feature(dtype: str) -> dict:
    return {'dtype': dtype, 'shape': [1], 'names': None}


def _vectors(values: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of float32 vectors as the fixed-size list column `datasets.Sequence(length=dim)` is stored as."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()),
                                             type=pa.list_(pa.float32(), values.shape[1]))


def _stats(values: np.ndarray) -> dict:
    values = values.astype(np.float64)
    return {'mean': values.mean(axis=0).tolist(), 'std': values.std(axis=0).tolist(),
            'min': values.min(axis=0).tolist(), 'max': values.max(axis=0).tolist(), 'count': [len(values)]}


def _tasks_table(tasks: list[str]) -> pa.Table:
    """tasks.parquet as pandas writes a frame indexed by ``task`` (LeRobot reads it with pandas): the
    index is a column named in the schema's ``pandas`` metadata (Apache Arrow, "Storing pandas
    DataFrame objects in Apache Parquet format")."""
    pandas_meta = {
        'index_columns': ['task'], 'column_indexes': [],
        'columns': [{'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
                     'numpy_type': 'int64', 'metadata': None},
                    {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode', 'numpy_type': 'object',
                     'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__}, 'pandas_version': '2.2.3'}
    schema = pa.schema([('task_index', pa.int64()), ('task', pa.string())],
                       metadata={b'pandas': json.dumps(pandas_meta).encode()})
    return pa.table({'task_index': list(range(len(tasks))), 'task': tasks}, schema=schema)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + '\n')


def export_demonstrations(demos: Iterable[Demonstration], root: str | os.PathLike[str], fps: int,
                          robot_type: str | None = None) -> ExportSummary:
    """Write `demos` (one robot's episodes, in order) as a LeRobot v3.0 dataset in the new or empty
    directory `root`, at `fps` frames per second (the rate the frames were recorded at)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f'{root} exists and is not an empty directory: export into a new directory')
    if fps < 1:
        raise DatasetError(f'fps must be at least 1, got {fps}')
    episodes = list(demos)
    if not episodes:
        raise DatasetError('the store holds no episodes: nothing to export')
    state_dim, action_dim = episodes[0].observation_state.shape[1], episodes[0].action.shape[1]
    for demo in episodes:
        if demo.observation_state.shape[1] != state_dim or demo.action.shape[1] != action_dim:
            raise DatasetError(f'episode {demo.episode_index} has dims {demo.observation_state.shape[1]}/'
                               f'{demo.action.shape[1]}, the first has {state_dim}/{action_dim}')
    tasks = list(dict.fromkeys(demo.task for demo in episodes))
    task_index = {task: i for i, task in enumerate(tasks)}
    lengths = np.array([demo.num_frames for demo in episodes], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total = int(lengths.sum())
    state = np.concatenate([demo.observation_state for demo in episodes])
    action = np.concatenate([demo.action for demo in episodes])
    columns = {
        STATE_KEY: _vectors(state), ACTION_KEY: _vectors(action),
        'timestamp': pa.array(np.concatenate([demo.timestamp for demo in episodes]), pa.float32()),
        'frame_index': pa.array(np.concatenate([np.arange(n) for n in lengths]), pa.int64()),
        'episode_index': pa.array(np.repeat(np.arange(len(episodes)), lengths), pa.int64()),
        'index': pa.array(np.arange(total), pa.int64()),
        'task_index': pa.array(np.repeat([task_index[demo.task] for demo in episodes], lengths), pa.int64()),
    }
    location = {'chunk_index': 0, 'file_index': 0}
    data_file = root / DATA_PATH.format(**location)
    data_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), data_file)
    episodes_file = root / EPISODES_PATH.format(**location)
    episodes_file.parent.mkdir(parents=True, exist_ok=True)
    zeros = pa.array(np.zeros(len(episodes), dtype=np.int64))
    pq.write_table(pa.table({
        'episode_index': pa.array(np.arange(len(episodes)), pa.int64()),
        'tasks': pa.array([[demo.task] for demo in episodes], pa.list_(pa.string())),
        'length': pa.array(lengths),
        'data/chunk_index': zeros, 'data/file_index': zeros,
        'dataset_from_index': pa.array(starts.astype(np.int64)),
        'dataset_to_index': pa.array((starts + lengths).astype(np.int64)),
        'meta/episodes/chunk_index': zeros, 'meta/episodes/file_index': zeros,
    }), episodes_file)
    pq.write_table(_tasks_table(tasks), root / TASKS_PATH)
    features = {STATE_KEY: _vector_feature(state_dim, 'state'), ACTION_KEY: _vector_feature(action_dim, 'action'),
                'timestamp': _scalar_feature('float32'), **{name: _scalar_feature('int64') for name in _INDEX_COLUMNS}}
    _write_json(root / STATS_PATH, {STATE_KEY: _stats(state), ACTION_KEY: _stats(action)})
    _write_json(root / INFO_PATH, {
        'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type, 'total_episodes': len(episodes),
        'total_frames': total, 'total_tasks': len(tasks), 'chunks_size': CHUNKS_SIZE,
        'data_files_size_in_mb': DATA_FILES_SIZE_IN_MB, 'video_files_size_in_mb': VIDEO_FILES_SIZE_IN_MB,
        'fps': fps, 'splits': {'train': f'0:{len(episodes)}'}, 'data_path': DATA_PATH, 'video_path': None,
        'features': features})
    cameras = sorted({cam for demo in episodes for cam in demo.images})
    return ExportSummary(root, len(episodes), total, tuple(tasks), tuple(cameras))


def _read_table(root: Path, relative: str) -> pa.Table:
    path = root / relative
    if not path.is_file():
        raise DatasetError(f'{path} is missing: not a LeRobot {CODEBASE_VERSION} dataset')
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f'{path} is not a readable parquet file: {exc}') from None


def _column(table: pa.Table, name: str, where: str) -> pa.Array:
    if name not in table.column_names:
        raise DatasetError(f'{where} has no column {name!r}')
    return table.column(name).combine_chunks()


def read_dataset(root: str | os.PathLike[str]) -> LeRobotDataset:
    """Read a LeRobot v3.0 dataset of vector features back into demonstrations, checking that the
    episode table and the frames agree (boundaries, lengths, indices)."""
    root = Path(root)
    try:
        info = json.loads((root / INFO_PATH).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f'{root / INFO_PATH} is unreadable: {exc}') from None
    if info.get('codebase_version') != CODEBASE_VERSION:
        raise DatasetError(f'{root / INFO_PATH}: codebase_version {info.get("codebase_version")!r}, '
                           f'this reader reads {CODEBASE_VERSION!r}')
    tasks_table = _read_table(root, TASKS_PATH)
    order = np.argsort(_column(tasks_table, 'task_index', TASKS_PATH).to_numpy())
    tasks = tuple(_column(tasks_table, 'task', TASKS_PATH).to_pylist()[i] for i in order)
    episodes_meta = pa.concat_tables(_read_table(root, str(path.relative_to(root)))
                                     for path in sorted((root / 'meta/episodes').glob('chunk-*/file-*.parquet')))
    data = pa.concat_tables(_read_table(root, str(path.relative_to(root)))
                            for path in sorted((root / 'data').glob('chunk-*/file-*.parquet')))
    state = _column(data, STATE_KEY, 'data')
    action = _column(data, ACTION_KEY, 'data')
    state = state.values.to_numpy().reshape(len(state), -1)
    action = action.values.to_numpy().reshape(len(action), -1)
    timestamp = _column(data, 'timestamp', 'data').to_numpy()
    frame_index, episode_index, index, task_index = (_column(data, name, 'data').to_numpy() for name in _INDEX_COLUMNS)
    if not np.array_equal(index, np.arange(len(index))) or len(index) != info.get('total_frames'):
        raise DatasetError(f'data: the index column is not 0..{info.get("total_frames")}-1 in order')
    demos = []
    for row in episodes_meta.to_pylist():
        begin, end, ep = row['dataset_from_index'], row['dataset_to_index'], row['episode_index']
        if (end - begin != row['length'] or not 0 <= begin < end <= len(index)
                or not np.all(episode_index[begin:end] == ep)
                or not np.array_equal(frame_index[begin:end], np.arange(end - begin))):
            raise DatasetError(f'episode {ep}: its frames [{begin}, {end}) in data do not match meta/episodes')
        task_ids = set(task_index[begin:end].tolist())
        if len(task_ids) != 1 or tasks[task_ids.pop()] not in row['tasks']:
            raise DatasetError(f'episode {ep}: task_index of its frames does not match its tasks {row["tasks"]}')
        demos.append(Demonstration(task=tasks[task_index[begin]], observation_state=state[begin:end],
                                   action=action[begin:end], timestamp=timestamp[begin:end], episode_index=ep))
    if sum(demo.num_frames for demo in demos) != len(index):
        raise DatasetError('data holds frames that no episode in meta/episodes covers')
    return LeRobotDataset(info, tasks, tuple(demos))
