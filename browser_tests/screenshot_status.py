"""Takes docs/status.png: the status page of two gateway processes on one Redis, under a little
load of every transport, in headless Chromium.

    .venv/bin/python -m browser_tests.screenshot_status [docs/status.png]

It starts redis-server and the gateways on free ports, runs for about a minute (the charts
need some history) and stops everything it started.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import requests

# The process helpers of tests/ import their neighbours as top-level modules, as under pytest.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from .support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    PinnedGateway,
    free_port,
    process_fixtures,
)

SECONDS = 60


def _load(gateways, stop: threading.Event) -> None:
    """Publishes a few events a second, with bursts, while clients of each transport come and go."""
    session = requests.Session()
    tick = 0
    streams = []
    while not stop.is_set():
        tick += 1
        gateway = gateways[tick % len(gateways)]
        for _ in range(1 + (tick % 7 == 0) * 20):
            session.post(f"{gateway.url}/publish/news", json={"data": tick}, timeout=5)
        if tick % 3 == 0 and len(streams) < 40:
            path = "/events/news" + ("?transport=stream" if tick % 2 else "")
            streams.append(process_fixtures.Stream(gateway.url + path))
        if tick % 5 == 0:
            threading.Thread(target=requests.get, daemon=True, args=(
                f"{gateway.url}/poll/news?timeout=8" + ("&callback=cb" if tick % 10 else ""),),
                kwargs={"timeout": 10}).start()
        if tick % 17 == 0 and streams:
            streams.pop(0).close()
        stop.wait(0.25)
    for stream in streams:
        stream.close()


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    redis_server = process_fixtures.RedisServer()
    redis_server.start()
    gateways = []
    stop = threading.Event()
    try:
        args = ["--redis-url", redis_server.url, "--presence-interval", "1"]
        gateways = [PinnedGateway(free_port(), args) for _ in range(2)]
        load = threading.Thread(target=_load, args=(gateways, stop), daemon=True)
        load.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(gateways[0].url + "/status", wait_until="domcontentloaded")
            time.sleep(SECONDS)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        stop.set()
        for gateway in gateways:
            gateway.cleanup()
        redis_server.cleanup()
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "status.png")
