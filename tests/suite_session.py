"""What a run of the suite sets up once, before any test (tests/ and browser_tests/ both call
`configure` from their conftest's `pytest_configure`):

- The polyfill bundle, built from the sources into the checkout's `gateway/static/` (where
  `sse-gateway build-assets` puts it, git-ignored), so that the gateways the tests start load
  it instead of each minifying the sources again: that was half of a gateway's start-up. It is
  built afresh at every run, from the code and sources of the run (a bundle left by an older
  run is never used), and moved into place whole (a gateway never reads half a file).
- Under pytest-xdist (`-n`, `--dist loadfile`): each test file runs whole on one worker (its
  module fixtures are set up once), the files of a group in `TOGETHER` on the same worker, one
  after the other; the costliest first, so that no long file is left for the end while the
  other worker idles. The progress is one line per test file, printed as the file ends
  (pytest's own lines per file interleave when workers run files side by side): its results,
  how far the run is, the worker and the file's wall-clock time.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import pytest

#: Files that run on one worker, one after the other: the test files of the engines (Firefox
#: and WebKit, started once per worker for the session), and the benchmark smokes (each pins
#: the server to one core and the load to the other).
TOGETHER = {
    "browser_tests/test_browser_engines.py": "engines",
    "browser_tests/test_browser_shared.py": "engines",
    "tests/test_benchmark_smoke.py": "benchmarks",
    "tests/test_benchmark_publish_smoke.py": "benchmarks",
}
#: A browser test costs about ten others (a page, a gateway, waits on real timers); the order of
#: the files is by their number of tests weighed so.
BROWSER_WEIGHT = 10

_configured = [False]


def configure(config: pytest.Config) -> None:
    if _configured[0]:
        return
    _configured[0] = True
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it all
        return
    _build_bundle()
    if getattr(config.option, "numprocesses", None):
        config.pluginmanager.register(FileProgress(config), "sse-gateway-file-progress")
        if config.getvalue("dist") == "loadfile":
            config.pluginmanager.register(_Scheduler(), "sse-gateway-scheduler")


def _build_bundle() -> None:
    from gateway.assets import PREBUILT, SRC_DIR, build_assets

    if not SRC_DIR.is_dir():
        return  # an installed package: its bundle is built already
    try:
        PREBUILT.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=PREBUILT.parent, prefix=".build-") as tmp:
            os.replace(build_assets(tmp), PREBUILT)
    except OSError:
        pass  # a read-only checkout: every gateway builds the bundle itself, as without this


class _Scheduler:
    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        from xdist.scheduler import LoadFileScheduling

        class FileGroups(LoadFileScheduling):
            """xdist's loadfile, with the groups of `TOGETHER` and the costliest units first."""

            _sorted = False

            def _split_scope(self, nodeid: str) -> str:
                path = nodeid.split("::", 1)[0]
                return TOGETHER.get(path, path)

            def _assign_work_unit(self, node) -> None:
                if not self._sorted:
                    self._sorted = True
                    units = sorted(self.workqueue.items(), key=lambda unit: -_cost(unit[1]))
                    self.workqueue.clear()
                    self.workqueue.update(units)
                super()._assign_work_unit(node)

        return FileGroups(config, log)


def _cost(nodeids) -> int:
    return sum(BROWSER_WEIGHT if nodeid.startswith("browser_tests/") else 1 for nodeid in nodeids)


class FileProgress:
    """One line per test file once its last test ended; pytest's per-test letters are not
    written meanwhile (the lines carry them)."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._files: Dict[str, List[str]] = {}  # file -> its test ids, in collection order
        self._letters: Dict[Tuple[str, str], str] = {}  # (test id, phase) -> letter
        self._done: Dict[str, int] = {}  # file -> tests ended
        self._started: Dict[str, float] = {}
        self._worker: Dict[str, str] = {}
        self._reported = 0
        self._total = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self) -> None:
        terminal = self._config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.showfspath = False  # a file's name as its first test starts: the lines say it

    @staticmethod
    def _file(nodeid: str) -> str:
        return nodeid.split("::", 1)[0]

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        if self._files:
            return  # every worker collects the same tests
        for nodeid in ids:
            self._files.setdefault(self._file(nodeid), []).append(nodeid)
        self._total = len(ids)

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report, config):
        category, letter, word = yield
        if letter and isinstance(getattr(report, "nodeid", None), str):
            self._letters.setdefault((report.nodeid, report.when), letter)
        return category, "", word

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._started.setdefault(self._file(nodeid), time.monotonic())

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report) -> None:
        worker = getattr(getattr(report, "node", None), "gateway", None)
        if worker is not None:
            self._worker[self._file(report.nodeid)] = worker.id
        if report.when not in ("teardown", "???"):  # "???": xdist's report of a worker's crash
            return
        path = self._file(report.nodeid)
        self._done[path] = self._done.get(path, 0) + 1
        self._reported += 1
        if self._done[path] == len(self._files.get(path, ())):
            self._line(path)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        for path in self._files:  # files that did not end (-x, a worker gone, Ctrl-C)
            if 0 < self._done.get(path, 0) < len(self._files[path]):
                self._line(path, unfinished=True)

    def _line(self, path: str, unfinished: bool = False) -> None:
        letters = "".join(self._letters.get((nodeid, when), "") for nodeid in self._files[path]
                          for when in ("setup", "call", "teardown", "???"))
        seconds = time.monotonic() - self._started.get(path, time.monotonic())
        percent = self._reported * 100 // max(self._total, 1)
        tail = f"[{percent:3d}%] {self._worker.get(path, '')} {seconds:5.1f} s"
        if unfinished:
            tail += f", {len(self._files[path]) - self._done[path]} tests did not end"
        terminal: Optional[object] = self._config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"{path} {letters} {tail}")
