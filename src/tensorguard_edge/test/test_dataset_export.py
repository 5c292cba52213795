"""A robot's store exported to LeRobot's v3.0 layout and read back with pyarrow is the same data."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorguard_edge.commands import EXIT_DATA, export_dataset_command
from tensorguard_edge.dataset_export import DatasetError, export_demonstrations, read_dataset
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.metaworld_source import record_demonstrations


def _awkward_episode(task: str, frames: int, seed: int) -> Demonstration:
    """Values float32 must keep bit for bit: subnormals, extremes, negative zero, jittered stamps."""
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(frames, 5)).astype(np.float32)
    state[0, :4] = [np.finfo(np.float32).tiny / 8, np.finfo(np.float32).max, -0.0, np.float32(1e-38)]
    stamps = np.cumsum(rng.uniform(0.015, 0.025, frames)).astype(np.float32)
    return Demonstration(task=task, observation_state=state, action=rng.normal(size=(frames, 2)).astype(np.float32),
                         timestamp=stamps)


@pytest.fixture(scope='module')
def metaworld_store(tmp_path_factory):
    """A store holding real scripted-expert episodes of two Meta-World tasks, as a robot records them."""
    store = DemonstrationStore(tmp_path_factory.mktemp('store') / 'demos', 64 * 1024 * 1024)
    for task in ('push-v3', 'reach-v3', 'push-v3'):
        for demo in record_demonstrations(task, 1, seed=len(store.tasks())):
            store.append_episode(demo)
    yield store
    store.close()


def _assert_same(read, expected):
    assert len(read) == len(expected)
    for i, (got, want) in enumerate(zip(read, expected)):
        assert got.episode_index == i and got.task == want.task
        for name in ('observation_state', 'action', 'timestamp'):
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == b.dtype == np.float32
            assert a.tobytes() == b.tobytes(), f'episode {i} {name} changed'


def test_a_metaworld_store_exports_and_reads_back_exactly(metaworld_store, tmp_path):
    stored = list(metaworld_store.iter_episodes())
    summary = export_demonstrations(stored, tmp_path / 'ds', fps=80, robot_type='sawyer')
    assert (summary.episodes, summary.frames, summary.tasks) == (3, sum(d.num_frames for d in stored),
                                                                 ('push-v3', 'reach-v3'))
    dataset = read_dataset(tmp_path / 'ds')
    _assert_same(dataset.episodes, stored)
    assert dataset.tasks == ('push-v3', 'reach-v3')
    info = dataset.info
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 80 and info['total_episodes'] == 3
    assert info['features']['observation.state']['shape'] == [39] and info['features']['action']['shape'] == [4]


def test_the_files_have_lerobots_columns_and_episode_boundaries(tmp_path):
    demos = [_awkward_episode('a', 7, 0), _awkward_episode('b', 1, 1), _awkward_episode('a', 4, 2)]
    export_demonstrations(demos, tmp_path, fps=50)
    data = pq.read_table(tmp_path / 'data/chunk-000/file-000.parquet')
    assert data.column_names == ['observation.state', 'action', 'timestamp', 'frame_index', 'episode_index',
                                 'index', 'task_index']
    state_type = data.schema.field('observation.state').type
    assert (state_type.list_size, state_type.value_type) == (5, pa.float32())
    assert data.column('episode_index').to_pylist() == [0] * 7 + [1] + [2] * 4
    assert data.column('task_index').to_pylist() == [0] * 7 + [1] + [0] * 4
    episodes = pq.read_table(tmp_path / 'meta/episodes/chunk-000/file-000.parquet').to_pylist()
    assert [(e['dataset_from_index'], e['dataset_to_index'], e['length'], e['tasks']) for e in episodes] == [
        (0, 7, 7, ['a']), (7, 8, 1, ['b']), (8, 12, 4, ['a'])]
    tasks = pq.read_table(tmp_path / 'meta/tasks.parquet')
    assert tasks.to_pydict() == {'task_index': [0, 1], 'task': ['a', 'b']}
    assert json.loads(tasks.schema.metadata[b'pandas'])['index_columns'] == ['task']
    stats = json.loads((tmp_path / 'meta/stats.json').read_text())
    assert stats['action']['count'] == [12]
    actions = np.concatenate([d.action for d in demos]).astype(np.float64)
    np.testing.assert_allclose(stats['action']['mean'], actions.mean(axis=0))
    _assert_same(read_dataset(tmp_path).episodes, demos)


def test_export_refuses_a_non_empty_directory_mixed_dimensions_and_nothing(tmp_path):
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'x').write_text('x')
    with pytest.raises(DatasetError, match='not an empty directory'):
        export_demonstrations([_awkward_episode('a', 2, 0)], tmp_path / 'old', fps=10)
    odd = Demonstration(task='a', observation_state=np.zeros((2, 3), np.float32), action=np.zeros((2, 2), np.float32))
    with pytest.raises(DatasetError, match='has dims 3/2'):
        export_demonstrations([_awkward_episode('a', 2, 0), odd], tmp_path / 'mixed', fps=10)
    with pytest.raises(DatasetError, match='no episodes'):
        export_demonstrations([], tmp_path / 'empty', fps=10)


def test_the_reader_names_what_is_wrong(tmp_path):
    export_demonstrations([_awkward_episode('a', 3, 0), _awkward_episode('b', 2, 1)], tmp_path, fps=10)
    episodes_file = tmp_path / 'meta/episodes/chunk-000/file-000.parquet'
    table = pq.read_table(episodes_file)
    shifted = table.set_column(table.column_names.index('dataset_to_index'), 'dataset_to_index',
                               [[4, 5]])
    pq.write_table(shifted, episodes_file)
    with pytest.raises(DatasetError, match=r'episode 0: its frames \[0, 4\)'):
        read_dataset(tmp_path)
    (tmp_path / 'meta/tasks.parquet').write_bytes(b'not parquet')
    with pytest.raises(DatasetError, match='tasks.parquet is not a readable parquet file'):
        read_dataset(tmp_path)


def test_the_operator_command_exports_a_robots_state_dir(tmp_path, capsys):
    demos = [_awkward_episode('a', 3, 0), _awkward_episode('b', 2, 1)]
    with DemonstrationStore(tmp_path / 'state' / 'demos', 1 << 20) as store:
        for demo in demos:
            store.append_episode(demo)
    assert export_dataset_command([str(tmp_path / 'state'), str(tmp_path / 'ds'), '--fps', '50']) == 0
    assert 'exported 2 episodes (5 frames, tasks: a, b)' in capsys.readouterr().out
    _assert_same(read_dataset(tmp_path / 'ds').episodes, demos)
    assert export_dataset_command([str(tmp_path / 'nothing'), str(tmp_path / 'ds2'), '--fps', '50']) == EXIT_DATA
    assert capsys.readouterr().err.startswith(f'error: {tmp_path / "nothing"}: no demonstration store')
