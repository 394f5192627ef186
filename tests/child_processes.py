"""Processes the tests start: each dies with the process that started it, and none outlives the run.

- `die_with_parent()` is the `preexec_fn` of every process a test starts: the kernel sends the
  child a signal when its parent dies (Linux `PR_SET_PDEATHSIG`), so nothing is left behind
  when a test SIGKILLs a process it started, or when pytest itself is killed (a timeout, the
  OOM killer, a Ctrl-C). The signal is tied to the *thread* that started the child: start
  processes from the main thread, or from a thread that outlives them.
- `no_process_outlives_the_tests`, an autouse session fixture, fails the run when a process the
  tests started is still alive once every other fixture has stopped its own, and kills it.
  A process is the run's when it descends from pytest, or carries the run's marker, the
  environment variable `PYTEST_SSE_GATEWAY_RUN` that every child inherits (an orphan that init
  adopted). redis-server and nginx write their process titles over their environment: they
  are found as descendants only, and die with their parent by `die_with_parent()`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import uuid
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

MARKER = "PYTEST_SSE_GATEWAY_RUN"
_PR_SET_PDEATHSIG = 1  # prctl(2)
_libc = ctypes.CDLL(None, use_errno=True)
GRACE = 5.0  # seconds for the last processes to exit after their fixtures stopped them


def _this_run() -> str:
    # `<pid>-<uuid>`: a pytest that a test starts gets a marker of its own.
    marker = os.environ.get(MARKER, "")
    if marker.split("-", 1)[0] != str(os.getpid()):
        marker = f"{os.getpid()}-{uuid.uuid4().hex}"
        os.environ[MARKER] = marker
    return marker


RUN = _this_run()


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `signum` when its parent dies. SIGKILL, unless the
    program must stop children of its own (nginx: SIGTERM stops its workers too)."""
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec (which keeps the setting)
        if _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os.kill(os.getpid(), signum)

    return preexec


def _state_and_parent(pid: int) -> Optional[Tuple[bytes, int]]:
    """The process' state letter and parent pid; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name in parentheses may hold spaces and parentheses: split after it.
    state, ppid = stat[stat.rindex(b")") + 2:].split(b" ", 2)[:2]
    return state, int(ppid)


def _processes() -> Iterator[Tuple[int, int]]:
    """(pid, parent pid) of every process but zombies (dead, awaiting their parent)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _state_and_parent(int(name))
            if found is not None and found[0] != b"Z":
                yield int(name), found[1]


def _marked(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return needle in handle.read().split(b"\0")
    except OSError:
        return False


def survivors() -> List[int]:
    """Live processes of this run other than pytest itself, by pid."""
    me = os.getpid()
    needle = f"{MARKER}={RUN}".encode()
    children: Dict[int, List[int]] = {}
    found = set()
    for pid, ppid in _processes():
        children.setdefault(ppid, []).append(pid)
        if pid != me and _marked(pid, needle):
            found.add(pid)
    stack = list(children.get(me, ()))
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return sorted(found)


def children(pid: int) -> List[int]:
    """The direct children of a live process (e.g. a supervisor's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(part) for part in handle.read().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int:
    """The resident memory of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def gone(pid: int) -> bool:
    """True when the process has exited (a zombie has: it only awaits its parent's wait)."""
    found = _state_and_parent(pid)
    return found is None or found[0] == b"Z"


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            text = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "(exited)"
    return text[:200] or "(no command line)"


def kill(pids: List[int]) -> None:
    """SIGKILL each, and reap those that are pytest's own children."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # not ours: init reaps it
            pass


def _left_after(grace: float) -> List[int]:
    # Usually one scan: every fixture waited for its processes. Some descendants (a
    # supervisor's workers, a browser's helpers) exit a moment after their parent.
    deadline = time.monotonic() + grace
    left = survivors()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = survivors()
    return left


_active = [0]  # checks in progress: one per suite directory whose conftest uses the fixture


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests():
    """An error at the end of the run when processes the tests started are still alive.

    tests/ and browser_tests/ each have this fixture; when both run, only the last to end
    checks, after the other's session fixtures have stopped their processes."""
    _active[0] += 1
    yield
    _active[0] -= 1
    if _active[0]:
        return
    left = _left_after(GRACE)
    if left:
        described = "\n".join(f"  {pid}: {command(pid)}" for pid in left)
        kill(left)
        pytest.fail(f"{len(left)} process(es) started by the tests outlived them "
                    f"(now killed):\n{described}", pytrace=False)
