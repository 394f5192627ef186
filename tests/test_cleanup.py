"""The suite's own hygiene (child_processes.py), checked by running pytest on small test files.

A run fails, naming them, when processes its tests started outlive it (a child never waited
for, and an orphan that init adopted), and kills them; a clean run passes; and a child started
with `die_with_parent()` dies when pytest itself is killed.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from child_processes import die_with_parent, gone
from conftest import wait_until

TESTS = Path(__file__).resolve().parent
CONFTEST = "from child_processes import die_with_parent, no_process_outlives_the_tests  # noqa\n"


def run_pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(test_source)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PIDS_FILE": str(tmp_path / "pids")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, preexec_fn=die_with_parent())


def pids(tmp_path: Path) -> list:
    return [int(pid) for pid in (tmp_path / "pids").read_text().split()]


@pytest.fixture
def started(tmp_path):
    """The pids the inner run wrote; any still alive afterwards are killed."""
    yield lambda: pids(tmp_path)
    if (tmp_path / "pids").exists():
        for pid in pids(tmp_path):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


LEAKS = """
import os, subprocess

def test_leaves_two_processes_behind():
    # Without the run's marker: found as pytest's descendant.
    child = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"]})
    # Its parent exits at once, so init adopts it: found by the marker it inherited.
    orphan = subprocess.run(["sh", "-c", "sleep 61 >/dev/null 2>&1 & echo $!"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with open(os.environ["PIDS_FILE"], "w") as f:
        f.write(f"{child.pid} {orphan}")
"""


def test_a_run_whose_tests_leave_processes_fails_naming_them_and_kills_them(tmp_path, started):
    result = run_pytest(tmp_path, LEAKS)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout
    assert "2 process(es) started by the tests outlived them (now killed)" in result.stdout
    child, orphan = started()
    assert f"{child}: sleep 60" in result.stdout
    assert f"{orphan}: sleep 61" in result.stdout
    wait_until(lambda: gone(child) and gone(orphan), 5, message="both to be killed")


CLEAN = """
import subprocess

def test_waits_for_what_it_starts():
    subprocess.run(["sleep", "0.1"], check=True)
"""


def test_a_run_whose_tests_wait_for_their_processes_passes(tmp_path):
    result = run_pytest(tmp_path, CLEAN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed in" in result.stdout


KILLED = """
import os, signal, subprocess
from child_processes import die_with_parent

def test_pytest_is_killed():
    child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())
    with open(os.environ["PIDS_FILE"], "w") as f:
        f.write(str(child.pid))
    os.kill(os.getpid(), signal.SIGKILL)  # as a timeout or the OOM killer would
"""


def test_a_child_dies_when_pytest_is_killed(tmp_path, started):
    result = run_pytest(tmp_path, KILLED)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    [child] = started()
    wait_until(lambda: gone(child), 5, message=f"the child {child} to die with pytest")
