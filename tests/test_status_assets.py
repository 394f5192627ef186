"""The status page's script: uPlot as npm ships it (kept in static_js/vendor/) and the page's own
code, bundled with webassets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from child_processes import die_with_parent
from conftest import ROOT

from gateway import assets

STATIC_JS = Path(ROOT) / "static_js"
VENDORED = ("dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE")


def test_the_vendored_uplot_is_the_npm_package_that_package_json_names():
    npm = shutil.which("npm")
    assert npm is not None, "npm is missing: run the README's test command, which installs it"
    package = STATIC_JS / "node_modules" / "uplot"
    if not package.is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=STATIC_JS,
                       env=dict(os.environ, PYTHON=sys.executable), check=True,
                       capture_output=True, timeout=300, preexec_fn=die_with_parent())
    wanted = json.loads((STATIC_JS / "package.json").read_text())["dependencies"]["uplot"]
    assert json.loads((package / "package.json").read_text())["version"] == wanted
    vendor = STATIC_JS / "vendor"
    for name in VENDORED:
        kept = vendor / ("uPlot.LICENSE" if name == "LICENSE" else Path(name).name)
        assert kept.read_bytes() == (package / name).read_bytes(), (
            f"{kept} differs from uplot {wanted}'s {name}: run `npm ci && npm run vendor` "
            "in static_js/")


def test_the_status_bundle_holds_uplot_and_the_page_code_and_parses(tmp_path):
    built = assets.build_status_assets(tmp_path)
    body = built.read_text("utf-8")
    uplot = (STATIC_JS / "vendor" / "uPlot.iife.min.js").read_text("utf-8")
    assert body.startswith(uplot.rstrip()[:200])
    assert "status-config" in body and "figures" in body
    # The page's code is minified: its comments are gone.
    assert "Each process publishes its figures" not in body
    node = shutil.which("node")
    assert node is not None, "node is missing: run the README's test command"
    check = subprocess.run([node, "--check", str(built)], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr.decode()
