"""Real-browser tests: headless Chromium, real gateway processes, real redis-server.

Every page is served by a second origin (a small HTTP server started here), so every test is
cross-origin as on a legacy site: the page loads `<gateway>/static/eventsource.js` with a script
tag and subscribes to `<gateway>/events/<channel>`. Tests assert on what the page received.

The process fixtures (`redis_db`, `start_gateway`, `broker_args`) and the check that no process
outlives the tests come from tests/conftest.py (see support.py); the helpers the tests import
are in support.py.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator, List, Optional, Sequence

import pytest

from .engines import (
    FIREFOX,
    MINIBROWSER,
    WEBKIT_DRIVER,
    XVFB,
    ChromiumEngine,
    EngineHarness,
    FirefoxEngine,
    WebKitEngine,
)
from .support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SETUP_HINT,
    SHIMS_FOR,
    FastPublisher,
    Harness,
    PageServer,
    PinnedGateway,
    free_port,
    process_fixtures,
)

redis_server = process_fixtures.redis_server
redis_db = process_fixtures.redis_db
start_gateway = process_fixtures.start_gateway
broker_args = process_fixtures.broker_args
no_process_outlives_the_tests = process_fixtures.no_process_outlives_the_tests
pytest_configure = process_fixtures.pytest_configure


# -- gateways ---------------------------------------------------------------------------------


@pytest.fixture
def pinned_gateways():
    """start(args, port=None) -> PinnedGateway; every one is killed at the end of the test."""
    started: List[PinnedGateway] = []

    def start(args: Sequence[str] = (), port: Optional[int] = None) -> PinnedGateway:
        gateway = PinnedGateway(port or free_port(), args)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.cleanup()


@pytest.fixture(scope="session")
def shared_gateway():
    """One embedded-broker gateway for tests that only need it to serve the polyfill script."""
    gateway = PinnedGateway(free_port(), [])
    try:
        yield gateway
    finally:
        gateway.cleanup()


@pytest.fixture(scope="session")
def redis_gateway(redis_server):
    """One Redis-broker gateway for tests that need no gateway of their own. (Other tests'
    `redis_db` empties Redis between tests; tests on this gateway use channels of their own.)"""
    gateway = PinnedGateway(free_port(), ["--redis-url", redis_server.url])
    try:
        yield gateway
    finally:
        gateway.cleanup()


@pytest.fixture(params=["embedded", "redis"])
def any_gateway(request):
    """The session's gateway on each broker in turn."""
    return request.getfixturevalue("shared_gateway" if request.param == "embedded"
                                   else "redis_gateway")


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses (for the gateways shared between tests)."""
    return "ch-" + uuid.uuid4().hex[:16]


@pytest.fixture
def publisher():
    """publisher(gateway) -> FastPublisher for that gateway; closed at the end of the test."""
    made: List[FastPublisher] = []

    def make(gateway) -> FastPublisher:
        made.append(FastPublisher(gateway.url))
        return made[-1]

    yield make
    for item in made:
        item.close()


# -- the second origin -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def page_servers() -> Iterator[tuple]:
    """Two page origins, both other than any gateway's: (primary, other)."""
    servers = (PageServer(), PageServer())
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def page_origin(page_servers) -> PageServer:
    return page_servers[0]


@pytest.fixture(scope="session")
def other_origin(page_servers) -> PageServer:
    return page_servers[1]


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for the whole session."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: {SETUP_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is missing: {SETUP_HINT}")
    manager = sync_playwright().start()
    try:
        instance = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                           headless=True)
    except Exception:
        manager.stop()
        raise
    try:
        yield instance
    finally:
        instance.close()
        manager.stop()


@pytest.fixture
def context(browser):
    ctx = browser.new_context()
    ctx.set_default_timeout(20_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def open_harness(context, page_origin):
    """open_harness(gateway_url, transport=None, shims=(), origin=page_origin) -> Harness,
    with the shims that `transport` needs."""

    def open_(gateway_url: str, transport: Optional[str] = None, shims: Sequence[str] = (),
              origin: Optional[PageServer] = None) -> Harness:
        needed = tuple(SHIMS_FOR.get(transport or "", ())) + tuple(shims)
        return Harness(context.new_page(), origin or page_origin, gateway_url, needed)

    return open_


# -- every engine -----------------------------------------------------------------------------


@pytest.fixture(scope="session", params=["chromium", "firefox", "webkit"])
def engine(request):
    """Each browser engine in turn (tests are grouped by engine: one runs at a time)."""
    binaries = {"chromium": [CHROMIUM], "firefox": [FIREFOX],
                "webkit": [WEBKIT_DRIVER, MINIBROWSER, XVFB]}[request.param]
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: {SETUP_HINT}")
    if request.param == "chromium":
        made = ChromiumEngine(request.getfixturevalue("browser"))
    elif request.param == "firefox":
        made = FirefoxEngine()
    else:
        made = WebKitEngine(free_port())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def open_engine_harness(engine, page_origin):
    """open_engine_harness(gateway_url) -> EngineHarness in a new page of the engine; the pages
    are closed at the end of the test."""
    pages: List = []

    def open_(gateway_url: str) -> EngineHarness:
        pages.append(engine.new_page())
        return EngineHarness(pages[-1], page_origin.origin, gateway_url)

    yield open_
    for page in pages:
        page.close_once()
