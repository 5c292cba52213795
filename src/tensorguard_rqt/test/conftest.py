"""One QApplication on Qt's offscreen platform for the whole session, with XDG folders in the test's
temporary directory (so nothing is written under the user's home), and a Qt-aware wait."""
import os
import time
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope='session')
def qapp(tmp_path_factory):
    """The session's QApplication (created after the environment is set up; the environment is restored after)."""
    runtime = tmp_path_factory.mktemp('xdg-runtime')
    runtime.chmod(0o700)
    wanted = {'QT_QPA_PLATFORM': 'offscreen', 'XDG_RUNTIME_DIR': str(runtime),
              'XDG_CONFIG_HOME': str(tmp_path_factory.mktemp('xdg-config'))}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    from python_qt_binding.QtWidgets import QApplication
    app = QApplication.instance() or QApplication(['tensorguard_rqt_test'])
    yield app
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def wait_qt(qapp) -> Iterator[Callable[[Callable[[], bool], float, str], None]]:
    """`wait_qt(predicate, timeout, what)`: process Qt events until `predicate()` holds, or fail naming `what`."""
    def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            qapp.processEvents()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
            time.sleep(0.05)
    yield wait
