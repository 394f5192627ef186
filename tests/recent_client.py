"""The test side of tests/recent_harness.py: start it, ask it, publish as the gateway does.

The fixture `start_harness(history_length, recent_events, recent_bytes, history_age)` (in
conftest.py) starts one on the test's Redis; it is stopped after the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Optional

from child_processes import die_with_parent
from conftest import ROOT

from gateway.redis_schema import PUBLISH_SCRIPT, publish_args

HARNESS = os.path.join(ROOT, "tests", "recent_harness.py")


class Harness:
    """The harness process, and the Redis it shares with this test."""

    def __init__(self, redis_db, history_length: int, recent_events: int, recent_bytes: int,
                 age: float) -> None:
        self.client = redis_db.client
        self.history_length, self.age_ms = history_length, int(age * 1000)
        self.script = self.client.register_script(PUBLISH_SCRIPT)
        self.log = tempfile.TemporaryFile()  # its log: reconnects, skipped entries
        self.proc = subprocess.Popen(
            [sys.executable, HARNESS, redis_db.url, str(history_length), str(recent_events),
             str(recent_bytes), str(age)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1, preexec_fn=die_with_parent())
        assert self._answer() == {"ready": True}
        self.tokens = self.sent = 0

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the harness ended; its log ends with:\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, size: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-size:]

    def ask(self, op: str, **fields) -> dict:
        self.sent += 1
        self.proc.stdin.write(json.dumps({"op": op, "seq": self.sent, **fields}) + "\n")
        answer = self._answer()
        assert answer.pop("seq") == self.sent, f"{op}: an answer out of turn: {answer}"
        assert "error" not in answer, f"{answer['error']}; its log ends with:\n{self.log_tail()}"
        return answer

    def history(self, positions: Dict[str, str], limit: Optional[int] = None) -> dict:
        """The hub's and Redis' answers (after everything published so far was dispatched)."""
        self.barrier()
        return self.ask("history", positions=positions, limit=limit)

    def publish(self, channel: str, message: bytes) -> str:
        keys, args = publish_args("", channel, message, self.history_length, self.age_ms)
        event_id, _ = self.script(keys=keys, args=args)
        return event_id.decode()

    def barrier(self) -> None:
        self.tokens += 1
        self.ask("barrier", token=str(self.tokens))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit", "seq": 0}) + "\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()
