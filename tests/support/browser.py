"""Headless Chromium (Debian's package) for the browser tests: the token view's pages and the MLflow UI."""

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path

from support import missing_system_part

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads commands
    from fd 3 and writes to fd 4, NUL-separated JSON): no port, no websocket client, no chromedriver."""

    def __init__(self, profile):
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()
        # our ends above 4 first, so the child's dup2 onto 3 and 4 cannot clobber one with the other
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_r, from_w)]
        os.close(to_r)
        os.close(from_w)
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(keep[0], 3), os.dup2(keep[1], 4)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in keep:
            os.close(fd)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method, session=None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to, data) :]
        while True:
            reply = self._next()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer within a minute")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its DevTools pipe")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def open(self, url: str) -> str:
        """A new tab showing `url`, loaded; returns its session id."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session)
        self.send("Page.navigate", session, url=url)
        while not any(e["method"] == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events):
            self._next()
        return session

    def js(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self, session: str) -> list[str]:
        """Console errors and uncaught exceptions of the tab so far."""
        out = []
        for e in self.events:
            if e.get("sessionId") != session:
                continue
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self):
        try:
            self.send("Browser.close")
        except (EOFError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)

    def wait_js(self, session: str, expression: str, timeout: float = 60.0, what: str = ""):
        """Poll a JS expression until it is truthy (a single-page app renders after its load event)."""
        deadline = time.monotonic() + timeout
        while True:
            # the page may still be loading (no body yet): an error counts as not yet
            value = self.js(session, f"(() => {{ try {{ return {expression} }} catch (e) {{ return false }} }})()")
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or expression[:80]}: not true after {timeout:.0f} s")
            time.sleep(0.5)

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def start_browser(profile) -> Chromium:
    """Chromium, or a failure that says how to install it."""
    if not os.access(CHROMIUM, os.X_OK):
        why = (
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(apt-get install -y --no-install-recommends chromium)"
        )
        missing_system_part(why)
    return Chromium(profile)
