"""The benchmark's smoke run against this gateway: the runner and load generator still work."""

import json
import subprocess
import sys

from child_processes import die_with_parent
from conftest import ROOT


def test_benchmark_smoke_delivers_every_event_to_every_subscriber(tmp_path):
    out = tmp_path / "smoke.jsonl"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--python", sys.executable,
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [cell] = [row for row in map(json.loads, out.read_text().splitlines())
              if row.get("target") == "sse-gateway"]
    assert "error" not in cell, cell
    assert cell["connected"] == 100
    assert cell["delivered"] == cell["expected"] > 0
