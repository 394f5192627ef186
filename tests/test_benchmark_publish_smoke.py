"""The publish and many-channels benchmarks' smoke runs: the runner, publish.py and the C floor
still work against this gateway, and their lines of JSON carry the fields the tables read."""

import json
import shutil
import subprocess
import sys

import pytest
from child_processes import die_with_parent
from conftest import ROOT

CELL_FIELDS = ("accepted", "events_per_s", "cpu_us_per_event", "server_cpu_us_per_event",
               "order_violations", "loadgen_cpu_s", "background_cpu_s", "phase_seconds")


def smoke(workload: str, out) -> list:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler for the benchmark's floor; run the README's test command")
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--workload", workload,
         "--python", sys.executable, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [row for row in map(json.loads, out.read_text().splitlines()) if "target" in row]
    for row in rows:
        assert "error" not in row, row
        for field in CELL_FIELDS:
            assert isinstance(row.get(field), (int, float)), (field, row)
    return rows


def test_publish_smoke_measures_single_publishes_and_batches_on_the_gateway_and_the_floor(
        tmp_path):
    rows = smoke("publish", tmp_path / "publish.jsonl")
    cells = {(row["target"], row["mode"]): row for row in rows}
    assert set(cells) == {(t, m) for t in ("sse-gateway", "floor") for m in ("single", "batch")}
    for target in ("sse-gateway", "floor"):
        single, batch = cells[(target, "single")], cells[(target, "batch")]
        assert single["subscribers"] == 10 and single["rate"] == 500
        assert single["delivered"] == single["expected"] == 10 * single["accepted"] > 0
        assert single["refused"] == 0 and single["reordered"] == 0
        assert batch["accepted"] > 0 and batch["subscribers"] == 0
    gateway = cells[("sse-gateway", "batch")]
    # The gateway's batches: its Redis measured apart, every channel's history read back.
    assert gateway["batch"] == 500 and gateway["redis_cpu_us_per_event"] > 0
    assert gateway["history_checked"] > 0 and gateway["history_channels_wrong"] == 0
    assert cells[("floor", "batch")]["batch"] == 1  # no batches there: a request per event


def test_channels_smoke_delivers_every_event_on_its_own_channel(tmp_path):
    rows = smoke("channels", tmp_path / "channels.jsonl")
    assert {row["target"] for row in rows} == {"sse-gateway", "floor"}
    for row in rows:
        assert row["mode"] == "channels" and row["channels"] == row["subscribers"] == 200
        assert row["delivered"] == row["expected"] == row["accepted"] > 0
        assert row["reordered"] == 0
