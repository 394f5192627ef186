#!/usr/bin/env bash
# Install everything the test suite needs on a Debian/Ubuntu machine, then run the whole suite.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k resume -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/firefox-esr ] || missing+=(firefox-esr)
[ -x /usr/bin/WebKitWebDriver ] || missing+=(webkit2gtk-driver)
[ -x /usr/bin/Xvfb ] || missing+=(xvfb)
command -v node >/dev/null || missing+=(nodejs npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing from apt: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
echo "installing the Python packages (log: .venv/install.log)"
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e ".[test,hiredis]"; } >.venv/install.log 2>&1; then
  cat .venv/install.log
  exit 1
fi

suites=(tests)
[ -d browser_tests ] && suites+=(browser_tests)
# Two workers (pytest-xdist), each running whole test files, the costliest first (see
# tests/suite_session.py); `-n 0` runs the suite in this one process instead. One line per test
# file as it ends, with its results, the run's progress, its worker and its time; then a
# summary of what failed and the slowest tests.
exec .venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile \
  -o console_output_style=classic -rfEX --durations=10 "${suites[@]}" "$@"
