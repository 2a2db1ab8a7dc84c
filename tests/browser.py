"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol with aiohttp's websocket.

    async with launch_chromium() as browser:
        page = await browser.new_page("http://127.0.0.1:8080/")
        await page.wait_for("document.querySelector('audio').currentTime > 1")

Tests that need it skip when `find_chromium()` is None (Debian: apt-get install chromium).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--password-store=basic",
    "--autoplay-policy=no-user-gesture-required",  # pages under test play media without a click
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)
START_TIMEOUT = 30.0


class BrowserError(Exception):
    """Chromium did not start, or a DevTools command or page script failed."""


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome executable, or None."""
    return next((path for name in NAMES if (path := shutil.which(name))), None)


class Page:
    """One tab, reached through a flattened DevTools session."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises awaited); `BrowserError` if it threw."""
        reply = await self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session_id,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {text}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy and return it; `TimeoutError` quoting the last value if not."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still {value!r} after {timeout:g} s")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close the tab."""
        await self.browser.send("Target.closeTarget", {"targetId": self.target_id})


class Browser:
    """A DevTools connection to a running Chromium; commands are matched to replies by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Run one DevTools command and return its result; `BrowserError` if Chromium refused it."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        reply = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = reply
        await self._ws.send_json(message)
        result = await asyncio.wait_for(reply, timeout=30)
        if "error" in result:
            raise BrowserError(f"{method}: {result['error'].get('message')}")
        return result.get("result", {})

    async def new_page(self, url: str) -> Page:
        """Open `url` in a new tab, attach to it and wait until its document has loaded."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        # Navigating from the blank tab (rather than creating the tab at `url`) reports failures and tells
        # when the new document exists; scripts evaluated before that would run in about:blank.
        navigated = await self.send("Page.navigate", {"url": url}, page.session_id)
        if navigated.get("errorText"):
            raise BrowserError(f"could not open {url}: {navigated['errorText']}")
        await page.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")
        return page

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.json()
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            # Events (no id) are not needed by the tests so far.
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(BrowserError("the DevTools connection closed"))

    async def close(self) -> None:
        """Ask Chromium to quit and drop the connection."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), timeout=5)
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def launch_chromium(*extra_flags: str, executable: str | None = None) -> AsyncIterator[Browser]:
    """Start a headless Chromium with a throwaway profile; quit it and remove the profile on exit."""
    path = executable or find_chromium()
    if path is None:
        raise BrowserError(f"no Chromium found (looked for {', '.join(NAMES)})")
    # Chromium's helper processes can still write to the profile for a moment after the browser has quit; a
    # leftover file in /tmp is no test failure.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        log_path = Path(profile) / "chromium.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [path, *FLAGS, *extra_flags, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            endpoint = await _devtools_endpoint(Path(profile), proc, log_path)
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(endpoint, max_msg_size=0)
                browser = Browser(ws)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _devtools_endpoint(profile: Path, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The browser's DevTools websocket URL, read from the file Chromium writes once it listens."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise BrowserError(f"Chromium exited with code {proc.returncode}: {tail}")
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) == 2:  # written in one go, but a half-written file shows up as one line
            port, path = lines
            return f"ws://127.0.0.1:{port}{path}"
        await asyncio.sleep(0.05)
    raise BrowserError(f"Chromium did not open its DevTools port within {START_TIMEOUT:g} s")


async def wait_until_playing(
    page: Page, audio: str, min_ready: int, past: float, timeout: float, what: str
) -> None:
    """Wait until the <audio> element `audio` (a JS expression) is ready and has played past `past` seconds.

    On timeout it fails with the element's state, which tells a stalled stream from a decoding error.
    """
    try:
        await page.wait_for(
            f"{audio}.readyState >= {min_ready} && {audio}.currentTime > {past}", timeout=timeout
        )
    except TimeoutError:
        state = await page.evaluate(
            f"JSON.stringify({{t: {audio}.currentTime, ready: {audio}.readyState,"
            f" error: {audio}.error && {audio}.error.message, paused: {audio}.paused}})"
        )
        raise AssertionError(f"{what} did not play: {state}") from None
