"""What the tests stand on: a real tickwire as a child process, real
WebSockets to it, the test Django project served over real HTTP, a TCP
relay that counts connections and requests, and logging in through Django.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

REPO = Path(__file__).resolve().parents[2]
TICKWIRE_BIN = Path(os.environ.get("TICKWIRE_BIN") or REPO / "target" / "debug" / "tickwire")
PROJECT = Path(__file__).resolve().parent / "project"
PASSWORD = "correct horse battery staple"
_LISTENING = re.compile(r"listening on\D*?(127\.0\.0\.1):(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTUP_SECONDS = 30.0


class Tickwire:
    """One tickwire server: `--listen 127.0.0.1:0` (or a given port), a
    random JWT secret and API key, no TICKWIRE_* from our environment, and a
    scratch directory as cwd, so that no config file of the repo is read."""

    def __init__(self, *extra_args: str) -> None:
        if not TICKWIRE_BIN.exists():
            raise RuntimeError(
                f"no tickwire binary at {TICKWIRE_BIN}: "
                "cargo build --bin tickwire, or set TICKWIRE_BIN"
            )
        self.jwt_secret = secrets.token_hex(32)
        self.api_key = "pub-" + secrets.token_hex(16)
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="tickwire-py-")
        self.port = 0
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def settings(self, **more: Any) -> dict[str, Any]:
        """A settings.TICKWIRE for this server."""
        return {"URL": self.url, "API_KEY": self.api_key, "JWT_SECRET": self.jwt_secret, **more}

    def start(self, port: int | None = None) -> Tickwire:
        """Starts it (again, on the same port when it ran before)."""
        listen_port = self.port if port is None else port
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKWIRE_")}
        env.update(NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        args = [
            str(TICKWIRE_BIN),
            "--listen",
            f"127.0.0.1:{listen_port}",
            "--jwt-secret",
            self.jwt_secret,
            "--api-key",
            self.api_key,
            *self.extra_args,
        ]
        proc = subprocess.Popen(
            args,
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._proc = proc
        found = threading.Event()
        port_box: list[int] = []

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = _ANSI.sub("", raw.rstrip("\n"))
                self.lines.append(line)
                del self.lines[:-2000]
                m = _LISTENING.search(line)
                if m and not found.is_set():
                    port_box.append(int(m.group(2)))
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not found.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("tickwire did not start:\n" + self.output())
        self.port = port_box[0]
        return self

    def wait_ready(self, timeout: float = 20.0) -> Tickwire:
        """Until GET /ready answers 200 (cluster mode: its Redis link is up)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(self.url + "/ready", timeout=2)
                if answer.status_code == 200:
                    return self
                last = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.05)
        raise RuntimeError(f"{self.url}/ready never answered 200 (last: {last})")

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (it drains and exits), SIGKILL if still there after 15 s."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: it keeps its sockets but answers nothing. Returns once
        every thread of it is stopped (a signal is delivered asynchronously)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self._proc.pid}/task")

        def stopped() -> bool:
            states = []
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            return bool(states) and all(state in ("T", "t") for state in states)

        wait_until(stopped, 5, "tickwire stopped by SIGSTOP")

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Socket:
    """A subscriber: a real WebSocket to tickwire, as a browser of the
    server's own host would open it (Origin = the server's origin)."""

    def __init__(
        self,
        server: Tickwire,
        path: str,
        *,
        cookie: str | None = None,
        token: str | None = None,
        origin: str | None = None,
    ) -> None:
        headers: dict[str, str] = {}
        if cookie is not None:
            headers["Cookie"] = f"access_token={cookie}"
        url = server.ws_url(path) + (f"?token={token}" if token else "")
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(
                url,
                additional_headers=headers,
                origin=Origin(origin or server.url),
                open_timeout=10,
                compression=None,
            )
        )
        self.seen: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = self.ws.recv(timeout=timeout)
        message: dict[str, Any] = json.loads(raw)
        self.seen.append(message)
        return message

    def expect(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first message from now on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message within {timeout} s; saw {self.seen[-10:]}")
            message = self.recv(timeout=left)
            if predicate(message):
                return message

    def expect_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.expect(lambda m: m.get("type") == kind, timeout)

    def subscribe(self, *symbols: str) -> None:
        self.send({"type": "subscribe", "symbols": list(symbols)})
        answer = self.expect(lambda m: m.get("type") in ("subscribed", "error"))
        assert answer["type"] == "subscribed", answer

    def close(self) -> None:
        self._stack.close()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_django() -> Iterator[str]:
    """The test project over real HTTP on a free loopback port; yields its URL."""
    from django.core.wsgi import get_wsgi_application

    server = make_server(
        "127.0.0.1",
        0,
        get_wsgi_application(),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def log_in(base_url: str, username: str) -> tuple[httpx.Client, httpx.Response]:
    """Logs in through the project's login form, as a browser does: GET the
    form (CSRF cookie and field), POST the credentials. Returns the client
    (with its cookies) and the answer to the POST."""
    client = httpx.Client(base_url=base_url, timeout=10, follow_redirects=False)
    form = client.get("/login/")
    assert form.status_code == 200, form.text
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = client.post(
        "/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf.group(1)},
    )
    assert answer.status_code == 302, f"login of {username} failed: {answer.status_code}"
    return client, answer


def set_cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]


class Relay:
    """A TCP relay to 127.0.0.1:target_port that counts the connections it
    relays and the HTTP requests that go through them (and their
    Idempotency-Keys). On its first `drop_answers` connections it passes the
    request on but cuts the connection instead of passing the answer back:
    an answer lost on the way."""

    def __init__(self, target_port: int, *, drop_answers: int = 0) -> None:
        self.target_port = target_port
        self.drop_answers = drop_answers
        self.connections = 0
        self.requests = 0
        self.idempotency_keys: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                dropping = self.connections <= self.drop_answers
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, False, dropping), daemon=True
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, counting: bool, dropping: bool = False
    ) -> None:
        try:
            while data := src.recv(65536):
                if dropping:
                    break
                if counting:
                    with self._lock:
                        self.requests += data.count(b"POST /api/publish HTTP/1.1")
                        self.idempotency_keys += re.findall(
                            r"(?im)^idempotency-key: *(\S+)\r$", data.decode("latin-1")
                        )
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class SilentServer:
    """Accepts connections and reads requests, but never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.02)
