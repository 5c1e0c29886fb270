"""Talking to servers the tests start on 127.0.0.1: free ports, waiting, and JSON over HTTP."""

import json
import socket
import time
import urllib.error
import urllib.request

# barely trained toys and short chains: the verdicts of the screening tests rest on the weights; the statistics are
# tested elsewhere
SCREEN_OVERRIDES = (
    "toy.train_steps=60 toy.batch_size=128 sampler.ladders=4 sampler.steps=200 sampler.burn_in=50 "
    "uncertainty.n_replicates=40 cross_eval.n_draws=500 plagiarism.permutations=19 "
    "plagiarism.simulations=49"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def post(url: str, body: bytes, headers: dict, timeout: float = 10.0) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def get_json_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def open_request(port: int, head: bytes, timeout: float = 10.0) -> socket.socket:
    """A connection to 127.0.0.1:port that has sent `head` (a request line and headers, or part of them)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> int | None:
    """The HTTP status answered on `sock`; None if the server closed it without an answer."""
    data = b""
    while b"\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/") else None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")
