"""The Redis broker's publishes: one connection of their own, shared by concurrent publishes.

Every publish is one EVALSHA of the publish script (all of its events in one atomic step). A
publish that finds the connection idle sends its command at once and reads the reply itself;
publishes that arrive while that round trip is under way wait, and then leave together, in one
write, their replies read back in order (group commit). Redis runs the commands in the order
they were written, so a channel keeps the order its publishes arrived in. A lone publisher pays
one write and one read; a hundred concurrent ones share them. A publish may also be submitted
now and waited for later (`submit`, `wait`): the requests pipelined on one HTTP connection
queue theirs one after another, and the first answer waited for sends them all in one flight.

The script is loaded on every new connection (a Redis that restarted has forgotten it); should
it be flushed all the same (SCRIPT FLUSH), the publishes it refused are loaded and sent again.
"""

import hashlib
from typing import Any, List, Optional, Sequence

import gevent.event
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# What the publishes waiting for a greenlet that was killed mid-flight are told.
_INTERRUPTED = RedisConnectionError("the publish in flight was interrupted; its outcome is unknown")


def pack(*args: Any) -> bytes:
    """One command in RESP: text as UTF-8, bytes as they are, numbers as their digits."""
    return b"*%d\r\n" % len(args) + _bulks(args)


def _bulks(args: Sequence[Any]) -> bytes:
    parts = []
    for arg in args:
        kind = arg.__class__
        if kind is str:
            arg = arg.encode("utf-8")
        elif kind is not bytes:
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class Job:
    """One run of the script, queued, in flight or answered."""

    __slots__ = ("command", "reply", "error", "done", "finished")

    def __init__(self, command: bytes) -> None:
        self.command = command
        self.reply: Any = None
        self.error: Optional[BaseException] = None
        self.done: Optional[gevent.event.Event] = None  # made only when someone waits
        self.finished = False

    def finish(self, reply: Any = None, error: Optional[BaseException] = None) -> None:
        self.reply, self.error, self.finished = reply, error, True
        self.command = b""  # never sent again; an answer held back keeps the job, not this
        if self.done is not None:
            self.done.set()


class Publishes:
    """Runs the publish script over one connection of `pool` (made for it alone)."""

    def __init__(self, pool: redis.ConnectionPool, script: str) -> None:
        self._pool = pool
        self._script = script
        self._sha = hashlib.sha1(script.encode("utf-8")).hexdigest()
        self._evalsha = _bulks(("EVALSHA", self._sha))
        self._connection = None
        self._queue: List[Job] = []
        self._flying = False
        self._due = False  # a callback will start a flight for jobs nobody waits for

    def run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply. Raises ResponseError for an error reply (a refusal), another
        RedisError or OSError when Redis cannot be reached: then nothing is known to be stored."""
        return self.wait(self.submit(keys, args))

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> Job:
        """Queue a run of the script, behind those queued before it; `wait` for its reply.
        It leaves with the next flight: the one a waiter starts, or else one started as soon
        as this greenlet yields, so it is run even if nobody waits."""
        # The command's name and the script's SHA1 packed once: a publish packs the rest.
        job = Job(b"*%d\r\n" % (3 + len(keys) + len(args)) + self._evalsha
                  + _bulks((len(keys), *keys, *args)))
        self._queue.append(job)
        if not self._flying and not self._due:
            self._due = True
            gevent.get_hub().loop.run_callback(self._start_due)
        return job

    def wait(self, job: Job) -> Any:
        """The reply of a submitted run, as `run` returns it or raises."""
        if not job.finished:
            if self._flying:
                job.done = gevent.event.Event()
                job.done.wait()
            else:
                self._fly()
        if job.error is not None:
            raise job.error
        return job.reply

    def close(self) -> None:
        self._drop()

    def _start_due(self) -> None:
        self._due = False
        if self._queue and not self._flying:
            gevent.spawn(self._fly_if_queued)

    def _fly_if_queued(self) -> None:
        if self._queue and not self._flying:
            self._fly()

    def _fly(self) -> None:
        """Send what is queued, again while more came meanwhile; no job is left unanswered."""
        self._flying = True
        try:
            while self._queue:
                jobs, self._queue = self._queue, []
                self._flight(jobs)
        except BaseException:  # killed while reading: tell everyone who waits
            self._fail(self._queue, _INTERRUPTED)
            self._queue = []
            self._drop()
            raise
        finally:
            self._flying = False

    def _flight(self, jobs: List[Job]) -> None:
        fresh = self._connection is None
        try:
            self._exchange(jobs)
        except (redis.RedisError, OSError) as error:
            self._drop()
            # A kept connection that Redis closed meanwhile (it restarted, say) fails before it
            # answers anything; Redis ran none of it, so the flight goes again on a new one.
            if fresh or not isinstance(error, RedisConnectionError) or any(j.finished for j in jobs):
                self._fail(jobs, error)
                return
            try:
                self._exchange(jobs)
            except (redis.RedisError, OSError) as again:
                self._drop()
                self._fail(jobs, again)
        except BaseException:
            self._fail(jobs, _INTERRUPTED)
            raise

    def _exchange(self, jobs: List[Job]) -> None:
        connection = self._connect()
        connection.send_packed_command([b"".join(job.command for job in jobs)], check_health=False)
        unknown = []
        for job in jobs:
            try:
                job.finish(connection.read_response())
            except NoScriptError:
                unknown.append(job)
            except redis.ResponseError as error:
                job.finish(error=error)
        if unknown:  # the script was flushed: load it and send these again, in their order
            self._load(connection)
            connection.send_packed_command([b"".join(job.command for job in unknown)],
                                           check_health=False)
            for job in unknown:
                try:
                    job.finish(connection.read_response())
                except redis.ResponseError as error:
                    job.finish(error=error)

    def _connect(self):
        if self._connection is None:
            connection = self._pool.make_connection()
            connection.connect()
            self._load(connection)
            self._connection = connection
        return self._connection

    def _load(self, connection) -> None:
        connection.send_packed_command([pack("SCRIPT", "LOAD", self._script)], check_health=False)
        connection.read_response()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except (redis.RedisError, OSError):
                pass

    @staticmethod
    def _fail(jobs: List[Job], error: BaseException) -> None:
        for job in jobs:
            if not job.finished:
                job.finish(error=error)
