"""`serve --workers N`: N gateway processes on one port, started, watched and stopped together.

Each worker is a whole gateway (its own hub and its one Redis pub/sub connection) listening
with SO_REUSEPORT, so the kernel spreads connections across them. The supervisor holds the
port, restarts a worker that dies (a client of a dead worker resumes on another from history),
and on SIGTERM or SIGINT stops them all within their shutdown timeout. The workers stop too
when the supervisor dies any other way (SIGKILL, the OOM killer). It runs no event loop:
the workers start from a fork before gevent is set up.

The workers' metrics are added up by prometheus-client's multiprocess mode: the supervisor
gives them a directory for their files in PROMETHEUS_MULTIPROC_DIR (a new temporary one,
removed at exit; or the one that variable names, emptied of its `*.db` files first), and
removes a dead worker's gauge files, so that its connections are no longer counted.

A worker whose settings the broker refuses at startup (BrokerRefused: a wrong Redis password)
writes why on a pipe the supervisor holds and exits with REFUSED_EXIT: the supervisor then
stops every worker and raises BrokerRefused with that text, rather than restart workers that
cannot serve.
"""

import ctypes
import dataclasses
import errno
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Dict, Tuple

from .brokers.base import BrokerRefused
from .config import Config
from .listener import bind

log = logging.getLogger("gateway.supervisor")
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_SECONDS = 10.0  # a worker that lived this long restarts after the shortest delay
KILL_GRACE = 5.0  # beyond the workers' own shutdown timeout
_PR_SET_PDEATHSIG = 1  # prctl(2)
# prometheus-client reads it when it is first imported: set before any worker starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker's exit status when the broker refused its settings (sysexits' EX_CONFIG).
REFUSED_EXIT = 78
_LINE_MAX = 4000  # bytes of its reason, under PIPE_BUF: written at once, never interleaved


def supervise(config: Config, run_worker: Callable[[Config], None]) -> int:
    """Run `config.workers` workers until SIGTERM or SIGINT; 0 when all stopped cleanly.
    Raises BrokerRefused, once every worker has stopped, when one's settings were refused."""
    # Bound, not listening: it takes no connections, but holds the port (0 picks one for all
    # workers) and reports a taken address before any worker starts.
    holder = bind(config.host, config.port, reuse_port=True)
    port = holder.getsockname()[1]
    metrics_dir, made = _metrics_dir()
    from prometheus_client.multiprocess import mark_process_dead
    config = dataclasses.replace(config, port=port)
    workers: Dict[int, float] = {}  # pid -> start time
    stopping = False
    clean = True
    supervisor = os.getpid()
    # Why a worker's settings were refused: a line each, shorter than PIPE_BUF (atomic).
    reasons, reasons_in = os.pipe()
    os.set_blocking(reasons, False)
    refusal = None

    def start() -> None:
        pid = os.fork()
        if pid == 0:
            holder.close()
            os.close(reasons)
            _run_child(run_worker, config, supervisor, reasons_in)
        workers[pid] = time.monotonic()

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("stopping %d worker(s)", len(workers))
            signal.signal(signal.SIGALRM, kill_all)
            signal.setitimer(signal.ITIMER_REAL, config.shutdown_timeout + KILL_GRACE)
        for pid in workers:
            _signal(pid, signal.SIGTERM)

    def kill_all(signum: int, frame: object) -> None:
        for pid in workers:
            log.error("worker %d did not stop in time; killing it", pid)
            _signal(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("starting %d workers on %s:%d", config.workers, config.host, port)
    for _ in range(config.workers):
        start()
    delay = RESTART_DELAY
    while workers:
        pid, status = os.wait()
        started = workers.pop(pid, None)
        if started is None:
            continue
        mark_process_dead(pid, metrics_dir)
        code = os.waitstatus_to_exitcode(status)
        if code == REFUSED_EXIT and refusal is None:
            refusal = _read_reason(reasons) or "the broker refused the settings"
            stop(signal.SIGTERM, None)
            continue
        if stopping:
            clean = clean and code == 0
            continue
        log.error("worker %d exited (%s); restarting it in %gs", pid, _describe(code), delay)
        time.sleep(delay)
        if stopping:
            continue
        lived = time.monotonic() - started
        delay = RESTART_DELAY if lived >= STABLE_SECONDS else min(delay * 2, RESTART_DELAY_MAX)
        start()
    signal.setitimer(signal.ITIMER_REAL, 0)
    holder.close()
    os.close(reasons)
    os.close(reasons_in)
    if made:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("all workers stopped")
    if refusal is not None:
        raise BrokerRefused(refusal)
    return 0 if clean else 1


def _metrics_dir() -> Tuple[str, bool]:
    """The workers' metrics directory, set in the environment; whether it was made here."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):  # a previous run's: its counts are not this run's
                os.remove(os.path.join(given, name))
        return given, False
    made = tempfile.mkdtemp(prefix="sse-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = made
    return made, True


def _read_reason(reasons: int) -> str:
    try:
        text = os.read(reasons, 4096)
    except OSError as error:
        if error.errno != errno.EAGAIN:
            raise
        return ""
    return text.decode("utf-8", errors="replace").split("\n", 1)[0]


def _run_child(run_worker: Callable[[Config], None], config: Config, supervisor: int,
               reasons: int) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    code = 0
    try:
        _stop_with(supervisor)
        run_worker(config)
    except BrokerRefused as error:
        # No traceback: the supervisor says why, once, and stops the others.
        line = str(error).replace("\n", " ").encode("utf-8")[:_LINE_MAX] + b"\n"
        os.write(reasons, line)
        code = REFUSED_EXIT
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies, however it dies.

    A worker that outlived its supervisor would keep its SO_REUSEPORT share of the port: a
    supervisor started again would share the port with it, and nothing would restart or stop
    it. The parent-death signal (Linux) covers every way the supervisor can die, from before
    the worker runs any code of its own, and needs nothing in the worker's event loop, as a
    pipe the worker watched would. SIGTERM rather than SIGKILL: the worker ends its streams
    cleanly and exits within its shutdown timeout, so its clients reconnect at once. The
    signal follows the thread that forked, and the supervisor has only one.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor:  # it died before the prctl: as if the signal had come
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"
