"""A strict stand-in for Domoticz 2025.1's ``/json.htm`` on 127.0.0.1 (unit and end-to-end tests).

It answers the way a real Domoticz 2025.1 does (checked against one), so that a client that
passes here behaves against the real thing:

* no WWW-Authenticate challenge, ever: a client must send Basic auth up front;
* with a user configured, a missing or wrong login is HTTP 401; with
  ``basic_auth_over_http=False`` (a fresh install) even the right login over plain HTTP is 401;
* ``type`` other than ``command``: HTTP 404; ``param`` other than ``udevice``: ``{"status":
  "ERROR"}`` (the stub knows no other command); unknown or missing ``idx``, or neither nvalue nor
  svalue: ``{"status": "ERR"}``; a path other than ``<prefix>/json.htm``: HTTP 404;
* a malformed svalue is answered ``OK``, as Domoticz does (it then shows "Invalid!"): the stub
  records ``svalue_well_formed`` (six non-negative integers) so that tests can insist on it.

Failure modes (``stub.failure = ...``): ``"401"``, ``"403"``, ``"404"``, ``"500"``, ``"err"``
(``{"status":"ERR"}``), ``"error"`` (``{"status":"ERROR"}``), ``"garbage"`` (200 with an HTML
page), ``"timeout"`` (answers OK after ``delay`` seconds), ``"hang"`` (never answers). Every
request is recorded, failing ones included.

Usage::

    with DomoticzStub(username="u", password="p", devices={7}) as stub:
        ...  # server setting: stub.server (host:port) or stub.url (with scheme and prefix)
        stub.wait_for_updates(1)
        assert stub.updates()[0].svalue == "1;2;3;4;5;6"
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FAILURES = ("401", "403", "404", "500", "err", "error", "garbage", "timeout", "hang")
_WELL_FORMED_P1 = re.compile(r"\d+(?:;\d+){5}")
_OK = {"status": "OK", "title": "Update Device"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]  # decoded; the first value of each name
    raw_query: str
    headers: dict[str, str]
    tls: bool
    auth_user: str | None  # user name of a Basic auth header (None: no or unreadable header)
    authorized: bool
    status: int  # HTTP status answered (0: none, the stub hung)
    body: str
    accepted: bool  # a udevice update that Domoticz took ("status": "OK")
    svalue: str | None  # the svalue parameter, as sent
    svalue_well_formed: bool | None  # None without svalue; else: six non-negative integers?


@dataclass
class _Answer:
    status: int
    body: str
    content_type: str = "application/json;charset=UTF-8"
    accepted: bool = False


class DomoticzStub:
    """Start with :meth:`start` (or ``with``); runs in a daemon thread on a free port."""

    def __init__(
        self,
        *,
        username: str = "",
        password: str = "",
        devices: Iterable[int] = (1,),
        basic_auth_over_http: bool = True,
        prefix: str = "",
        tls: tuple[str, str] | None = None,
        failure: str | None = None,
        delay: float = 30.0,
    ) -> None:
        """``tls``: (certificate file, key file) to serve https; ``prefix``: a reverse proxy path
        such as ``/domoticz``; ``delay``: how long the ``timeout`` failure waits."""
        self.username = username
        self.password = password
        self.devices = set(devices)
        self.basic_auth_over_http = basic_auth_over_http
        self.prefix = prefix.rstrip("/")
        self.failure = failure
        self.delay = delay
        self._tls = tls
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._svalues: dict[int, str] = {}
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.tls_failures = 0  # handshakes that failed (e.g. the client refused the certificate)

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> DomoticzStub:
        context = None
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
        server = _Server(("127.0.0.1", 0), _Handler, stub=self, context=context)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases "hang" and "timeout" handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DomoticzStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- addresses --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stub first"
        return self._server.server_address[1]

    @property
    def server(self) -> str:
        """``127.0.0.1:port``: the plain form of the ``domoticzserver`` setting (http only)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The full base URL, with scheme and path prefix."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.prefix}"

    # --- what happened ----------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def updates(self, idx: int | None = None) -> list[RecordedRequest]:
        """Accepted udevice requests (for ``idx``, or all)."""
        return [
            request
            for request in self.requests
            if request.accepted and (idx is None or request.query.get("idx") == str(idx))
        ]

    def svalue(self, idx: int) -> str | None:
        """The device's current svalue, as Domoticz would store it (None: never updated)."""
        with self._lock:
            return self._svalues.get(idx)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``count`` requests arrived; AssertionError after ``timeout`` seconds."""
        return self._wait(lambda: self._requests, count, timeout, "requests")

    def wait_for_updates(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``count`` accepted updates arrived; AssertionError after ``timeout``."""

        def accepted() -> list[RecordedRequest]:
            return [request for request in self._requests if request.accepted]

        return self._wait(accepted, count, timeout, "accepted updates")

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _wait(self, select: object, count: int, timeout: float, what: str) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(select()) < count:  # type: ignore[operator]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"waited {timeout:g} s for {count} {what}, got {len(select())}: "  # type: ignore[operator]
                        f"{self._requests}"
                    )
                self._changed.wait(remaining)
            return list(select())  # type: ignore[operator]

    def _record(self, request: RecordedRequest, idx: int | None) -> None:
        with self._changed:
            self._requests.append(request)
            if request.accepted and idx is not None and request.svalue is not None:
                self._svalues[idx] = request.svalue if request.svalue_well_formed else "Invalid!"
            self._changed.notify_all()

    # --- Domoticz's behaviour ---------------------------------------------------------------
    def _authorize(self, header: str | None, tls: bool) -> tuple[str | None, bool]:
        user, password = _basic_credentials(header)
        if not self.username:
            return user, True
        right = user == self.username and password == self.password
        return user, right and (tls or self.basic_auth_over_http)

    def _answer(self, path: str, query: dict[str, str], authorized: bool) -> _Answer:
        """What Domoticz 2025.1 answers."""
        if path != f"{self.prefix}/json.htm":
            return _Answer(404, _html(404, "Not Found"), "text/html")
        if not authorized:
            # Domoticz sends no WWW-Authenticate header: clients must authenticate up front.
            return _Answer(401, _html(401, "Unauthorized"), "text/html")
        if query.get("type") != "command":
            return _Answer(404, _html(404, "Not Found"), "text/html")
        if query.get("param") != "udevice":
            return _Answer(200, _json({"status": "ERROR"}))
        idx_text = query.get("idx", "")
        if not idx_text.isdigit() or int(idx_text) not in self.devices:
            return _Answer(200, _json({"status": "ERR"}))
        if not query.get("nvalue") and not query.get("svalue"):
            return _Answer(200, _json({"status": "ERR"}))
        return _Answer(200, _json(_OK), accepted=True)

    def _forced_answer(self, failure: str) -> _Answer | None:
        """The answer a failure mode forces, or None when Domoticz's own answer follows."""
        if failure in ("401", "403", "404", "500"):
            return _Answer(int(failure), _html(int(failure), "Forced failure"), "text/html")
        if failure == "err":
            return _Answer(200, _json({"status": "ERR"}))
        if failure == "error":
            return _Answer(200, _json({"status": "ERROR"}))
        if failure == "garbage":
            return _Answer(200, "<html><body>Login</body></html>", "text/html")
        if failure == "timeout":
            self._stopping.wait(self.delay)  # a slow Domoticz: the real answer, but late
            return None
        raise ValueError(f"unknown failure mode {failure!r}; one of {FAILURES}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        stub: DomoticzStub,
        context: ssl.SSLContext | None,
    ) -> None:
        self.stub = stub
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: object, client_address: object) -> None:
        # The TLS handshake runs here, in the connection's own thread, so that a client that
        # refuses the certificate cannot stall the accept loop.
        if self.context is None:
            super().finish_request(request, client_address)  # type: ignore[arg-type]
            return
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)  # type: ignore[arg-type]
        except (ssl.SSLError, OSError):
            with self.stub._lock:
                self.stub.tls_failures += 1
            return
        try:
            super().finish_request(wrapped, client_address)  # type: ignore[arg-type]
        finally:
            wrapped.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Domoticz
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the stub records requests; stderr noise would only clutter test output

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        stub = self.server.stub
        parts = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        tls = isinstance(self.connection, ssl.SSLSocket)
        user, authorized = stub._authorize(self.headers.get("Authorization"), tls)
        failure = stub.failure
        answer: _Answer | None
        if self.command != "GET":
            answer = _Answer(405, _html(405, "Method Not Allowed"), "text/html")
        elif failure == "hang":
            stub._stopping.wait()
            answer = None
        else:
            forced = stub._forced_answer(failure) if failure is not None else None
            answer = forced or stub._answer(parts.path, query, authorized)
        svalue = query.get("svalue")
        record = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=query,
            raw_query=parts.query,
            headers=dict(self.headers.items()),
            tls=tls,
            auth_user=user,
            authorized=authorized,
            status=0 if answer is None else answer.status,
            body="" if answer is None else answer.body,
            accepted=answer is not None and answer.accepted,
            svalue=svalue,
            svalue_well_formed=None if svalue is None else _is_p1_svalue(svalue),
        )
        idx_text = query.get("idx", "")
        stub._record(record, int(idx_text) if idx_text.isdigit() else None)
        if answer is None:
            self.close_connection = True
            return
        payload = answer.body.encode("utf-8")
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout tests): nothing to tell


def _is_p1_svalue(svalue: str) -> bool:
    """Six non-negative integers separated by ``;``: all a P1 device shows correctly."""
    return _WELL_FORMED_P1.fullmatch(svalue) is not None


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.startswith("Basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else (None, None)


def _json(document: dict[str, str]) -> str:
    return json.dumps(document)


def _html(status: int, text: str) -> str:
    title = f"{status} {text}"
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
