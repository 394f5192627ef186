"""`sse-gateway build-assets`: a command of the source tree, refused clearly where there are no sources."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from child_processes import die_with_parent
from conftest import ROOT


def build_assets(pythonpath: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "build-assets", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)},
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=die_with_parent())


def test_in_an_installed_package_it_says_in_one_line_that_it_needs_a_source_checkout(tmp_path):
    # What a wheel installs: the gateway package, its prebuilt bundle, no static_js/.
    site = tmp_path / "site-packages"
    shutil.copytree(Path(ROOT) / "gateway", site / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    result = build_assets(site, tmp_path, str(out))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"sse-gateway build-assets: no polyfill sources in "
                           f"{site / 'static_js' / 'src'}: "), line
    assert "source checkout" in line
    assert not out.exists()


def test_in_the_source_tree_it_builds_the_bundle(tmp_path):
    result = build_assets(Path(ROOT), tmp_path, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    built = tmp_path / "out" / "eventsource.min.js"
    assert result.stdout.strip() == str(built)
    assert b"EventSource" in built.read_bytes()
