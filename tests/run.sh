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
pytest=(.venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile
        -o console_output_style=classic -rfEX)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" --durations=10 "${suites[@]}" "$@"
fi
"${pytest[@]}" --durations=10 "${suites[@]}"

# The HTTP layer and the event loop's wake-ups again on the lowest gevent pyproject.toml allows
# (its newest patch release), imported ahead of the installed one by the tests and the gateways
# they start.
lowest=$(grep -o '"gevent>=[0-9.]*' pyproject.toml | cut -d= -f2)
echo "the HTTP layer on gevent ~=${lowest}.0, the lowest release allowed"
.venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/gevent-lowest \
  "gevent~=${lowest}.0" >>.venv/install.log 2>&1 || { tail -20 .venv/install.log; exit 1; }
export PYTHONPATH=.venv/gevent-lowest
.venv/bin/python -c 'import gevent; print("gevent", gevent.__version__, "from", gevent.__file__)'
exec "${pytest[@]}" tests/test_http_h1.py tests/test_http_hostile.py tests/test_http_server.py \
  tests/test_http_keepalive.py tests/test_stream_connections.py tests/test_hub_streams.py \
  tests/test_wakeups.py tests/test_poll_wakeups.py tests/test_publish_pipelined.py \
  tests/test_poll_direct.py
