"""The three browser engines behind one small interface, each driven through Debian's own binary
(nothing is downloaded): Chromium through Playwright, Firefox ESR through WebDriver BiDi (its
built-in remote agent, spoken here over a WebSocket), WebKitGTK through WebKitWebDriver (plain
WebDriver over HTTP) with MiniBrowser under an Xvfb display.

An `Engine` opens `Page`s; a page only navigates, evaluates a JavaScript function with one
JSON argument and returns its JSON result (a promise is awaited), and closes. That is all the
portable tests need: they read what the page received, never the browser's network log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence
from urllib.parse import quote

import requests

FIREFOX = "/usr/bin/firefox-esr"
WEBKIT_DRIVER = "/usr/bin/WebKitWebDriver"
MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"
XVFB = "/usr/bin/Xvfb"

#: Calls the page's function with the JSON argument; settles with {"ok": result} or {"error": text}.
_WRAP = ("function (fn, arg, done) { try { Promise.resolve(fn(JSON.parse(arg))).then("
         "function (r) { done(JSON.stringify({ok: r === undefined ? null : r})); },"
         "function (e) { done(JSON.stringify({error: String(e && e.stack || e)})); }); }"
         " catch (e) { done(JSON.stringify({error: String(e && e.stack || e)})); } }")

#: Firefox preferences: no first-run pages, no background traffic to Mozilla's services.
FIREFOX_PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.proxy.type": 0,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.newtabpage.enabled": False,
    "dom.disable_open_during_load": False,
}


class EngineError(AssertionError):
    """The page's function threw, or the driver refused a command."""


class Page:
    """One tab (a window of its own in Firefox and WebKit, so that none is a background tab)."""

    closed = False

    def close_once(self) -> None:
        if not self.closed:
            self.closed = True
            self.close()

    def goto(self, url: str) -> None:
        raise NotImplementedError

    def evaluate(self, function: str, arg: Any = None) -> Any:
        """Call the JavaScript function (source text) with `arg`; its (awaited) JSON result."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Engine:
    name = ""
    version = ""

    def new_page(self) -> Page:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _unwrap(text: str) -> Any:
    outcome = json.loads(text)
    if "error" in outcome:
        raise EngineError(outcome["error"])
    return outcome["ok"]


def _stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End a process started in a session of its own, and whatever it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout)


# -- Chromium ---------------------------------------------------------------------------------


class ChromiumPage(Page):
    def __init__(self, page) -> None:
        self.page = page

    def goto(self, url: str) -> None:
        self.page.goto(url)

    def evaluate(self, function: str, arg: Any = None) -> Any:
        script = f"([arg]) => new Promise(function (done) {{ ({_WRAP})({function}, arg, done); }})"
        return _unwrap(self.page.evaluate(script, [json.dumps(arg)]))

    def close(self) -> None:
        self.page.close()


class ChromiumEngine(Engine):
    """Pages in one Playwright browser context of the session's Chromium."""

    name = "chromium"

    def __init__(self, browser) -> None:
        self.version = browser.version
        self.context = browser.new_context()

    def new_page(self) -> Page:
        return ChromiumPage(self.context.new_page())

    def close(self) -> None:
        self.context.close()


# -- Firefox: WebDriver BiDi -------------------------------------------------------------------


class FirefoxPage(Page):
    def __init__(self, engine: "FirefoxEngine", context: str) -> None:
        self.engine = engine
        self.context = context

    def goto(self, url: str) -> None:
        self.engine.command("browsingContext.navigate",
                            {"context": self.context, "url": url, "wait": "complete"})

    def evaluate(self, function: str, arg: Any = None) -> Any:
        result = self.engine.command("script.callFunction", {
            "functionDeclaration": (f"function (arg) {{ return new Promise(function (done) {{"
                                    f" ({_WRAP})({function}, arg, done); }}); }}"),
            "arguments": [{"type": "string", "value": json.dumps(arg)}],
            "target": {"context": self.context},
            "awaitPromise": True,
            "resultOwnership": "none",
        })
        if result.get("type") == "exception":
            raise EngineError(json.dumps(result.get("exceptionDetails")))
        return _unwrap(result["result"]["value"])

    def close(self) -> None:
        self.engine.command("browsingContext.close", {"context": self.context})


class FirefoxEngine(Engine):
    """Debian's Firefox ESR, headless, with a fresh profile, driven over WebDriver BiDi."""

    name = "firefox"

    def __init__(self) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="sse-gateway-firefox-")
        with open(os.path.join(self.profile, "user.js"), "w") as prefs:
            for key, value in FIREFOX_PREFS.items():
                prefs.write(f"user_pref({json.dumps(key)}, {json.dumps(value)});\n")
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", self.profile,
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"})
        self._next_id = 0
        self._lock = threading.Lock()
        try:
            url = self._listening_url(30)
            self.ws = websocket.create_connection(url + "/session", timeout=60,
                                                  suppress_origin=True)
            session = self.command("session.new", {"capabilities": {}})
            self.version = session["capabilities"]["browserVersion"]
            self._blank = self.command("browsingContext.getTree", {})["contexts"][0]["context"]
        except BaseException:
            self._stop()
            raise

    def _listening_url(self, timeout: float) -> str:
        found: List[str] = []

        def read() -> None:
            for raw in self.proc.stderr:
                match = re.search(r"WebDriver BiDi listening on (ws://\S+)", raw.decode(errors="replace"))
                if match and not found:
                    found.append(match.group(1))
            # The rest of stderr is drained here, so that the browser never blocks on it.

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"{FIREFOX} did not start its WebDriver BiDi agent")
            time.sleep(0.05)
        return found[0]

    def command(self, method: str, params: Dict[str, Any]) -> Dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = json.loads(self.ws.recv())
                if message.get("id") == ident:
                    break  # anything else is an event: none is subscribed to
        if message.get("type") == "error":
            raise EngineError(f"{method}: {message.get('error')}: {message.get('message')}")
        return message["result"]

    def new_page(self) -> Page:
        context = self.command("browsingContext.create", {"type": "window"})["context"]
        return FirefoxPage(self, context)

    def close(self) -> None:
        try:
            self.command("session.end", {})
        except Exception:  # noqa: BLE001 (the browser is stopped below either way)
            pass
        self._stop()

    def _stop(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        _stop_group(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)


# -- WebKitGTK: WebDriver over HTTP ------------------------------------------------------------


class WebKitPage(Page):
    def __init__(self, engine: "WebKitEngine", handle: str) -> None:
        self.engine = engine
        self.handle = handle

    def goto(self, url: str) -> None:
        self.engine.command(self.handle, "POST", "url", {"url": url})

    def evaluate(self, function: str, arg: Any = None) -> Any:
        script = (f"var done = arguments[arguments.length - 1];"
                  f" ({_WRAP})({function}, arguments[0], done);")
        return _unwrap(self.engine.command(self.handle, "POST", "execute/async",
                                           {"script": script, "args": [json.dumps(arg)]}))

    def close(self) -> None:
        self.engine.command(self.handle, "DELETE", "window", None)


class WebKitEngine(Engine):
    """Debian's WebKitGTK MiniBrowser in automation mode, under its own Xvfb display, driven by
    WebKitWebDriver. Each page is a window of one session; commands switch windows as needed."""

    name = "webkit"

    def __init__(self, port: int) -> None:
        self.xvfb: Optional[subprocess.Popen] = None
        self.driver: Optional[subprocess.Popen] = None
        self.session: Optional[str] = None
        self.current: Optional[str] = None
        self._lock = threading.Lock()
        self.http = requests.Session()
        try:
            display = self._start_xvfb()
            self.base = f"http://127.0.0.1:{port}"
            self.driver = subprocess.Popen(
                [WEBKIT_DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "DISPLAY": display})
            self._wait_for_driver(15)
            answer = self.http.post(self.base + "/session", timeout=60, json={"capabilities": {
                "alwaysMatch": {"webkitgtk:browserOptions": {
                    "binary": MINIBROWSER, "args": ["--automation"]}}}}).json()["value"]
            if "sessionId" not in answer:
                raise EngineError(f"WebKitWebDriver refused a session: {answer}")
            self.session = answer["sessionId"]
            self.version = answer["capabilities"]["browserVersion"]
            self._blank = self._raw("GET", "window", None)
            self.current = self._blank
        except BaseException:
            self._stop()
            raise

    def _start_xvfb(self) -> str:
        read, write = os.pipe()
        self.xvfb = subprocess.Popen(
            [XVFB, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(write)
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()  # Xvfb writes it once the display is ready
        if not number.isdigit():
            raise EngineError(f"{XVFB} did not start")
        return f":{number}"

    def _wait_for_driver(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.http.get(self.base + "/status", timeout=1)
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.driver.poll() is not None:
                    raise EngineError(f"{WEBKIT_DRIVER} did not start") from None
                time.sleep(0.05)

    def _raw(self, method: str, path: str, body: Optional[dict]) -> Any:
        response = self.http.request(method, f"{self.base}/session/{self.session}/{path}",
                                     json=body, timeout=60)
        value = response.json()["value"]
        if response.status_code != 200:
            raise EngineError(f"{method} {path}: {value}")
        return value

    def command(self, handle: str, method: str, path: str, body: Optional[dict]) -> Any:
        with self._lock:
            if handle != self.current:
                self._raw("POST", "window", {"handle": handle})
                self.current = handle
            value = self._raw(method, path, body)
            if path == "window" and method == "DELETE":
                self.current = None
            return value

    def new_page(self) -> Page:
        with self._lock:
            if self.current is None:  # a closed window was current: new windows need one
                self._raw("POST", "window", {"handle": self._blank})
                self.current = self._blank
            handle = self._raw("POST", "window/new", {"type": "window"})["handle"]
        return WebKitPage(self, handle)

    def close(self) -> None:
        if self.session:
            try:
                self.http.delete(f"{self.base}/session/{self.session}", timeout=30)
            except requests.RequestException:
                pass
        self._stop()

    def _stop(self) -> None:
        for proc in (self.driver, self.xvfb):
            if proc is not None:
                _stop_group(proc)
        self.http.close()


ENGINES: Dict[str, Callable[..., Engine]] = {
    "chromium": ChromiumEngine, "firefox": FirefoxEngine, "webkit": WebKitEngine}


# -- the harness page, in any engine ------------------------------------------------------------


class EngineHarness:
    """pages/harness.html in a page of any engine (the portable twin of support.Harness, without
    a network log: what the page received is all it reads)."""

    def __init__(self, page: Page, page_origin: str, gateway_url: str) -> None:
        self.page = page
        self.gateway_url = gateway_url
        page.goto(f"{page_origin}/pages/harness.html?gateway={quote(gateway_url, safe='')}")
        self.wait("() => !!(window.SSEGateway && window.listen)")

    def events_url(self, channel: str) -> str:
        return f"{self.gateway_url}/events/{channel}"

    def listen(self, url: str, transport: str, types: Sequence[str] = (), **options) -> None:
        self.page.evaluate("(a) => { listen(a.url, a.transport, a.options, a.types); }",
                           {"url": url, "transport": transport, "options": options,
                            "types": list(types)})

    def received(self) -> List[dict]:
        return self.page.evaluate("() => window.received")

    def opens(self) -> List[int]:
        return self.page.evaluate("() => window.opens")

    def errors(self) -> List[int]:
        return self.page.evaluate("() => window.errors")

    def ready_state(self) -> int:
        return self.page.evaluate("() => window.source.readyState")

    def wait(self, expression: str, arg: Any = None, timeout: float = 20.0) -> None:
        """Wait until the JS function `expression` (called with `arg`) returns something truthy;
        the page itself checks every 50 ms, and answers once it holds or the time is up."""
        held = self.page.evaluate(
            "(w) => new Promise(function (resolve) {"
            " var test = new Function('arg', 'return (' + w.expression + ')(arg);'),"
            " end = Date.now() + w.ms;"
            " (function check() { var ok = false; try { ok = !!test(w.arg); } catch (e) {}"
            " if (ok || Date.now() > end) { resolve(ok); } else { setTimeout(check, 50); } }()); })",
            {"expression": expression, "arg": arg, "ms": timeout * 1000})
        if not held:
            raise AssertionError(f"timed out after {timeout}s waiting for {expression} ({arg}); "
                                 f"received {len(self.received())} events, opens {self.opens()}, "
                                 f"errors {self.errors()}")

    def wait_open(self, timeout: float = 20.0) -> None:
        self.wait("() => window.source && window.source.readyState == 1 && window.opens.length",
                  timeout=timeout)

    def wait_received(self, count: int, timeout: float = 20.0) -> List[dict]:
        self.wait("n => window.received.length >= n", count, timeout)
        return self.received()

    def observe(self, seconds: float) -> None:
        """Let the page run for a bounded time (to show that something does NOT happen)."""
        self.page.evaluate("(ms) => new Promise(function (r) { setTimeout(r, ms); })",
                           seconds * 1000)
