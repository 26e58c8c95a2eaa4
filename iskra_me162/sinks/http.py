"""The latest readout over HTTP, for Home Assistant's RESTful sensor and anything else that polls.

``http_listen = "host:port"`` turns it on. Three read-only resources:

``GET /api/electricity/cumulated``
    ``{"time": ..., "type": 0, "unit": "kWh", "value": <1.8.0 in kWh>}``, the answer of the
    older service this project replaces, so that its users only change the URL.
``GET /api/v1/readings``
    every register of the latest readout, the meter's identity, the time of the reading and
    its age, plus ``import_kwh``, ``export_kwh`` and ``power_w`` for Home Assistant.
``GET /healthz``
    200 while the latest reading is fresh, 503 otherwise (the Docker HEALTHCHECK).

Before the first reading, and once the latest is older than ``stale_after`` seconds (measured
with ``time.monotonic()``: the wall clock jumps), every resource answers 503 with a JSON error
and never a zero or an old value, so that a consumer sees "unavailable" instead of recording a
drop to 0.

The server is the standard library's ``ThreadingHTTPServer`` with the edges filed off for a
service that runs unattended on a small machine and may face a hostile network:

* one thread per connection, at most ``max_connections`` of them; when all are taken, the
  connection that has waited longest without completing its request is dropped for the new
  one (and while all are busy answering, new ones wait in the kernel's listen queue), so a
  flood of idle or slow connections can neither exhaust memory nor lock out Home Assistant;
* a connection gets ``request_timeout`` seconds in all (a client that sends one byte per
  second is cut off too, not only one that sends nothing), and its request head at most
  16 KiB;
* one request per connection, only GET and HEAD, fixed JSON bodies that never echo the
  request, no version banner, and every request logged at DEBUG only;
* ``publish()`` (the meter loop) swaps one reference under a lock: it never waits for a
  client. The first request after it renders the bodies, once per reading: with live power a
  reading comes up to once a second, and one a client never asks for costs nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

from iskra_me162.derive.values import Energy, Power, Values
from iskra_me162.errors import ConfigError, SinkError
from iskra_me162.health import Health, HealthSnapshot
from iskra_me162.jsontext import iso_utc, to_json
from iskra_me162.sinks import netcheck

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # handler threads; Home Assistant needs one, a browser a few
REQUEST_TIMEOUT = 10.0  # seconds a connection may take in all, and per socket operation
MAX_REQUEST_LINE = 2048  # bytes; our paths are short, the limit only guards memory
MAX_HEADER_BYTES = 16384  # all header lines together (browsers with cookies stay far below)
MAX_HEADER_LINES = 64
POLL_INTERVAL = 0.5  # seconds between checks for overdue connections
# After an error answer the client may still be sending (a huge header, a POST body). Closing
# with unread input makes the kernel answer its further data with a reset: its sends fail, and
# many clients then never read our answer. So read and discard for a bounded time first.
DISCARD_TIME = 1.0
DISCARD_IDLE = 0.25
DISCARD_BYTES = 1 << 20

ALLOWED_METHODS = "GET, HEAD"
_ROUTES = {
    "/api/electricity/cumulated": "cumulated",
    "/api/v1/readings": "readings",
    "/healthz": "health",
}


@dataclass(frozen=True)
class PageContext:
    """What a page rendered per request sees: the values as ``/api/v1/readings`` serves them
    (None before the first readout), their age and staleness, the daemon's health and the
    meter's name (device_name; "" when not set)."""

    values: Values | None
    age_s: float | None
    stale: bool
    health: HealthSnapshot | None
    device_name: str = ""


# A page rendered at each request (the status page at "/", the metrics): (content type, body).
# Pages are read-only views of PageContext; they never see the configuration (no secrets).
PageRenderer = Callable[[PageContext], tuple[str, bytes]]

# RFC 9110 token characters, for methods and header names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_VERSION = re.compile(r"HTTP/\d\.\d")
_QUERY = re.compile(r"\?[^\s\"]*")  # a query string in a logged request line


# --- listen address ---------------------------------------------------------------------------


def parse_listen(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` into host and port, or raise ValueError saying what is wrong.

    The host is an IPv4 address (``127.0.0.1``, ``0.0.0.0`` for every interface), an IPv6
    address in brackets (``[::1]``, ``[::]``) or a host name (``localhost``). ``any_port``
    also accepts port 0, "any free port" (for tests: a configured service needs a known port).
    """
    text = value.strip()
    example = 'write "127.0.0.1:8080" (this machine only) or "0.0.0.0:8080" (all interfaces)'
    if not text:
        raise ValueError(f"no address given; {example}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, after = text[1:close], text[close + 1 :]
        if not after.startswith(":"):
            raise ValueError(f"{text!r}: expected [address]:port, e.g. [::1]:8080")
        port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} has no port; {example}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
        if not host:
            raise ValueError(f"{text!r} has no host; {example}")
        _check_host(text, host)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    port = int(port_text)
    if port > 65535 or (port == 0 and not any_port):
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, port


def _check_host(text: str, host: str) -> None:
    try:
        netcheck.check_host(host)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- what is served ------------------------------------------------------------------------------


def _kwh(energy: Energy | None) -> Decimal | None:
    return None if energy is None else energy.total_kwh


def _watts(power: Power | None) -> Decimal | None:
    return None if power is None else power.watts


@dataclass(frozen=True)
class _Snapshot:
    """The latest readout, rendered once (on the first request for it) so that serving it
    again costs nearly nothing.

    The age of the reading changes with every request, so the body of ``/api/v1/readings`` is
    kept in two pieces that the age goes between.
    """

    monotonic: float
    values: Values  # for the pages rendered per request
    cumulated: bytes | None  # None: the meter sends no import register
    readings_head: bytes
    readings_tail: bytes

    @classmethod
    def render(cls, values: Values, stale_after: float) -> _Snapshot:
        when = iso_utc(values.wall_time)
        import_kwh = _kwh(values.import_energy)
        cumulated = None
        if import_kwh is not None:
            document = {"time": when, "type": 0, "unit": "kWh", "value": import_kwh}
            cumulated = to_json(document).encode("ascii")
        identity = values.identity
        net = values.net_power
        rest = {
            "stale_after_s": stale_after,
            "meter": {
                "id": identity.meter_id,
                "manufacturer": identity.manufacturer,
                "model": identity.model,
                "serial": identity.serial,
            },
            "import_kwh": import_kwh,
            "export_kwh": _kwh(values.export_energy),
            "power_w": _watts(net),
            "import_power_w": _watts(values.import_power),
            "export_power_w": _watts(values.export_power),
            "power_source": None if net is None else net.source,
            "power_missing": values.power_missing or None,
            "readings": [
                {
                    "obis": str(reading.code),
                    "value": reading.value,
                    "unit": reading.unit,
                    "raw": reading.raw,
                    "extra": list(reading.extra),
                }
                for reading in values.readout.readings
            ],
        }
        members = to_json(rest)[1:]  # without its "{": the age goes before it
        return cls(
            monotonic=values.monotonic,
            values=values,
            cumulated=cumulated,
            readings_head=('{"time":' + to_json(when) + ',"age_s":').encode("ascii"),
            readings_tail=("," + members).encode("ascii"),
        )


def _error(message: str) -> bytes:
    return to_json({"error": message}).encode("ascii")


# Fixed error bodies: nothing from the request ever goes into an answer.
_NO_READING = _error("no reading from the meter yet")
_STALE = _error("the latest reading is too old")
_NO_IMPORT = _error("the meter sends no import energy register (1.8.0)")
_NOT_FOUND = _error("not found")
_NOT_ALLOWED = _error("method not allowed")
_ERROR_BODIES = {
    HTTPStatus.BAD_REQUEST: _error("bad request"),
    HTTPStatus.REQUEST_URI_TOO_LONG: _error("request line too long"),
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: _error("request header too large"),
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: _error("HTTP version not supported"),
}
_BUSY_BODY = _error("too many connections")
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n".encode("ascii")
    + b"Retry-After: 1\r\nConnection: close\r\n\r\n"
    + _BUSY_BODY
)


def _answer(
    route: str, snapshot: _Snapshot | None, now: float, stale_after: float
) -> tuple[int, bytes]:
    """Status and body for a GET of ``route`` at monotonic time ``now``."""
    if snapshot is None:
        return HTTPStatus.SERVICE_UNAVAILABLE, _NO_READING
    age = max(0.0, now - snapshot.monotonic)
    if age > stale_after:
        return HTTPStatus.SERVICE_UNAVAILABLE, _STALE
    if route == "cumulated":
        if snapshot.cumulated is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, _NO_IMPORT
        return HTTPStatus.OK, snapshot.cumulated
    age_text = to_json(round(age, 3)).encode("ascii")
    if route == "readings":
        return HTTPStatus.OK, snapshot.readings_head + age_text + snapshot.readings_tail
    return HTTPStatus.OK, b'{"status":"ok","age_s":' + age_text + b"}"


class _Latest:
    """The one reference the meter loop writes and the server threads read: the latest values,
    rendered by the first request that asks for them (live power publishes up to once a second,
    a client such as Home Assistant reads every 30 s: most values are never asked for)."""

    def __init__(self, stale_after: float) -> None:
        self._lock = threading.Lock()
        self._stale_after = stale_after
        self._values: Values | None = None
        self._snapshot: _Snapshot | None = None  # of _values, once a request asked

    def set(self, values: Values) -> None:
        with self._lock:
            self._values, self._snapshot = values, None

    def get(self) -> _Snapshot | None:
        with self._lock:
            if self._snapshot is None and self._values is not None:
                self._snapshot = _Snapshot.render(self._values, self._stale_after)
            return self._snapshot


# --- connections ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    accepted: float  # time.monotonic()
    # True while the client has not finished its request (or we are discarding its input
    # after an error): such a connection may be dropped to make room for a new one.
    evictable: bool = True
    evicted: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)


class _Connections:
    """The open client connections, their deadlines, and the cap on their number.

    A connection is only ever *shut down* from another thread (which wakes its handler
    thread from ``recv``), never closed: its own thread closes it after leaving the table,
    so no other thread can touch a file descriptor that was closed and reused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changed = threading.Condition()
        self._open: dict[socket.socket, _Connection] = {}
        self._stopping = False

    def make_room(self, timeout: float) -> bool:
        """Wait until one more connection fits; True when it does (accept it right away).

        When all ``limit`` slots are taken, the connection that has waited longest without
        completing its request is shut down for the new one. Its thread ends moments later;
        until then (so that there are never more than twice ``limit`` threads), and while every
        slot is busy answering, new connections wait in the kernel's listen queue. False after
        ``timeout`` seconds, so that the caller can check deadlines, or when stopping.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._stopping:
                live = [conn for conn in self._open.values() if not conn.evicted]
                idle = [conn for conn in live if conn.evictable]
                if len(live) >= self.limit and idle:
                    oldest = min(idle, key=lambda conn: conn.accepted)
                    self._evict(oldest)
                    live.remove(oldest)
                if len(live) < self.limit and len(self._open) < 2 * self.limit:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return False

    def any_open(self) -> bool:
        """True while a connection that may still need reaping is open."""
        with self._changed:
            return any(not conn.evicted for conn in self._open.values())

    def add(self, sock: socket.socket, now: float) -> _Connection:
        with self._changed:
            connection = _Connection(sock, now)
            self._open[sock] = connection
            return connection

    def set_evictable(self, sock: socket.socket, evictable: bool) -> None:
        with self._changed:
            connection = self._open.get(sock)
            if connection is not None:
                connection.evictable = evictable
                self._changed.notify_all()

    def release(self, connection: _Connection) -> None:
        with self._changed:
            self._open.pop(connection.sock, None)
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def reap(self, now: float, timeout: float) -> int:
        """Shut down the connections older than ``timeout`` seconds; return how many."""
        with self._changed:
            overdue = [
                conn
                for conn in self._open.values()
                if not conn.evicted and now - conn.accepted > timeout
            ]
            for connection in overdue:
                self._evict(connection)
        return len(overdue)

    def shut_all(self) -> list[threading.Thread]:
        """Shut down every connection; return their threads, to be joined."""
        with self._changed:
            for connection in self._open.values():
                if not connection.evicted:
                    self._evict(connection)
            return [conn.thread for conn in self._open.values() if conn.thread is not None]

    @staticmethod
    def _evict(connection: _Connection) -> None:
        connection.evicted = True
        with contextlib.suppress(OSError):  # the client has gone already
            connection.sock.shutdown(socket.SHUT_RDWR)


# --- the server ----------------------------------------------------------------------------------


class _Rejected(Exception):
    """The request is malformed or too large: answer ``status`` and close."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


def _printable(text: str, limit: int = 200) -> str:
    """Request text made safe for a log line (no control characters), and short."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:limit])


class _Handler(BaseHTTPRequestHandler):
    """Reads one request head within the limits and answers it from the latest snapshot."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "iskra-me162"
    sys_version = ""  # no Python version in the Server header
    disable_nagle_algorithm = True  # header and body go out as two writes: no 40 ms stall

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # per socket operation
        super().setup()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:
        # Without the query string: the endpoint takes none, and a client (or a proxy in front)
        # may put a token there that does not belong in the journal.
        text = _QUERY.sub("?...", format % args)
        logger.debug("HTTP %s: %s", self.client_address[0], _printable(text))

    def handle(self) -> None:
        self.close_connection = True
        self.command = ""
        self.request_version = self.protocol_version
        self.requestline = ""
        try:
            request = self._read_request()
        except _Rejected as rejected:
            self._send(rejected.status, _ERROR_BODIES[rejected.status])
            self._discard_input()
            return
        except OSError:
            return  # timed out, reset, or dropped by the server: nothing to answer
        if request is None:
            return  # the client closed without a (complete) request
        self.server.connections.set_evictable(self.connection, False)
        method, target = request
        if method not in ("GET", "HEAD"):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, _NOT_ALLOWED, ("Allow", ALLOWED_METHODS))
            self._discard_input()  # a POST may come with a body
            return
        path = target.split("?", 1)[0]
        page = self.server.pages.get(path)
        if page is not None:
            self._send_page(page)
            return
        route = _ROUTES.get(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, _NOT_FOUND)
            return
        status, body = _answer(
            route, self.server.latest.get(), time.monotonic(), self.server.stale_after
        )
        self._send(status, body)

    def _read_line(self, limit: int, too_long: HTTPStatus) -> bytes | None:
        """One line of at most ``limit`` bytes (line end included); None at end of input."""
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise _Rejected(too_long)
        return line if line.endswith(b"\n") else None

    def _read_request(self) -> tuple[str, str] | None:
        """Method and target of the request; the header lines are checked and dropped."""
        line = self._read_line(MAX_REQUEST_LINE, HTTPStatus.REQUEST_URI_TOO_LONG)
        if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: tolerate an empty line before a request
            line = self._read_line(MAX_REQUEST_LINE, HTTPStatus.REQUEST_URI_TOO_LONG)
        if line is None:
            return None
        self.requestline = line.rstrip(b"\r\n").decode("latin-1")
        parts = line.rstrip(b"\r\n").split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
            raise _Rejected(HTTPStatus.BAD_REQUEST)
        method, target, version = (part.decode("latin-1") for part in parts)
        self.command = method
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            if _HTTP_VERSION.fullmatch(version):
                raise _Rejected(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
            raise _Rejected(HTTPStatus.BAD_REQUEST)
        if not target or not all(0x21 <= ord(ch) <= 0x7E for ch in target):
            raise _Rejected(HTTPStatus.BAD_REQUEST)
        self.request_version = version
        self._skip_header()
        return method, target

    def _skip_header(self) -> None:
        # We need no header at all, so none is kept; they are only checked for form and size.
        budget = MAX_HEADER_BYTES
        for _ in range(MAX_HEADER_LINES + 1):
            line = self._read_line(budget, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if line is None:
                raise ConnectionError("the client closed in the middle of the request")
            if line in (b"\r\n", b"\n"):
                return
            budget -= len(line)
            name, colon, _ = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):  # also rejects obsolete line folding
                raise _Rejected(HTTPStatus.BAD_REQUEST)
        raise _Rejected(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def _send_page(self, page: PageRenderer) -> None:
        snapshot = self.server.latest.get()
        health = self.server.health
        age = None if snapshot is None else max(0.0, time.monotonic() - snapshot.monotonic)
        context = PageContext(
            values=None if snapshot is None else snapshot.values,
            age_s=age,
            stale=age is None or age > self.server.stale_after,
            health=None if health is None else health.snapshot(),
            device_name=self.server.device_name,
        )
        try:
            content_type, body = page(context)
        except Exception:  # a bug in a page must not take the endpoint down
            logger.exception("HTTP: a page failed to render (please report this)")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _error("the page failed to render"))
            return
        self._send(HTTPStatus.OK, body, content_type=content_type)

    def _send(
        self,
        status: int,
        body: bytes,
        *extra: tuple[str, str],
        content_type: str = "application/json",
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError as error:
            logger.debug("HTTP %s: answer not sent: %s", self.client_address[0], error)

    def _discard_input(self) -> None:
        sock = self.connection
        self.server.connections.set_evictable(sock, True)
        try:
            sock.shutdown(socket.SHUT_WR)  # the client has the whole answer and our EOF now
            sock.settimeout(DISCARD_IDLE)
            deadline = time.monotonic() + DISCARD_TIME
            discarded = 0
            while discarded < DISCARD_BYTES and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() shuts connections down and joins them itself
    # Listen backlog: a burst of connects must not wait for SYN retries. 128 was too small:
    # with 200 idle connections opened at once the queue overflowed and the kernel dropped a
    # real client's SYN, which then came a second later. Linux clamps this to somaxconn.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple,
        family: socket.AddressFamily,
        latest: _Latest,
        stale_after: float,
        max_connections: int,
        request_timeout: float,
        pages: dict[str, PageRenderer],
        health: Health | None,
    ) -> None:
        self.address_family = family
        self.latest = latest
        self.pages = pages
        self.health = health
        self.stale_after = stale_after
        self.device_name = ""
        self.request_timeout = request_timeout
        self.connections = _Connections(max_connections)
        # close() writes a byte here to wake the accept loop at once (serve_forever() would
        # only notice a shutdown at its next poll).
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = False
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise

    def serve_until_stopped(self) -> None:
        """Accept connections until stop(); while any are open, check their deadlines at least
        every POLL_INTERVAL."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping:
                # With no connection open there is no deadline to check: sleep until a client
                # or stop() wakes us, instead of waking twice a second on an idle Pi.
                ready = selector.select(POLL_INTERVAL if self.connections.any_open() else None)
                if self._stopping:
                    break
                if any(key.fileobj is self.socket for key, _ in ready) and (
                    self.connections.make_room(POLL_INTERVAL)
                ):
                    self._accept()
                self.service_actions()

    def stop(self) -> None:
        self._stopping = True
        self.connections.stop()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError as error:  # the client reset already, or out of file descriptors
            logger.debug("HTTP: accept failed: %s", error)
            return
        self.process_request(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our own name (socket.getfqdn), which can hang for
        # many seconds on a Pi booting without network. We never use that name.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        # Runs in the accept loop, after make_room(): must never block on a client.
        connection = self.connections.add(request, time.monotonic())
        connection.thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address, connection),
            name="http-client",
            daemon=True,
        )
        try:
            connection.thread.start()
        except RuntimeError:  # the system cannot start another thread now
            self.connections.release(connection)
            logger.debug("HTTP %s: refused, cannot start a thread", client_address[0])
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY_RESPONSE)
            self.shutdown_request(request)

    def _serve_connection(
        self, request: socket.socket, client_address: tuple, connection: _Connection
    ) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - logged by handle_error; must not end the thread silently
            self.handle_error(request, client_address)
        finally:
            self.connections.release(connection)  # before closing: see _Connections
            self.shutdown_request(request)

    def service_actions(self) -> None:
        # An exception here would end the accept loop, so none may escape.
        try:
            reaped = self.connections.reap(time.monotonic(), self.request_timeout)
            if reaped:
                logger.debug("HTTP: closed %d connection(s) that took too long", reaped)
        except Exception:
            logger.exception("HTTP endpoint: checking connection deadlines failed")

    def handle_error(self, request: object, client_address: tuple) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("HTTP %s: %s", client_address[0], error)
        else:
            logger.exception("HTTP endpoint: unexpected error serving %s", client_address[0])


# --- the sink ----------------------------------------------------------------------------------


def _bind_error(where: str, error: OSError) -> str:
    reasons = {
        errno.EADDRINUSE: "the port is already in use by another program",
        errno.EACCES: "permission denied (ports below 1024 need root; use e.g. 8080)",
        errno.EADDRNOTAVAIL: "this machine has no such address",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    return f"cannot listen on {where} (http_listen): {reason}"


class HttpEndpoint:
    """The HTTP sink: ``start()`` once, ``publish()`` every readout, ``close()`` at the end."""

    name = "http"

    def __init__(
        self,
        listen: str,
        stale_after: float,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        pages: dict[str, PageRenderer] | None = None,
        health: Health | None = None,
        device_name: str = "",
    ) -> None:
        """``pages``: paths rendered per request (see :data:`PageRenderer`); ``health`` and
        ``device_name`` (the key): what they show besides the values."""
        try:
            self._host, self._port = parse_listen(listen, any_port=True)
        except ValueError as error:
            raise ConfigError(f"http_listen: {error}") from None
        if not (math.isfinite(stale_after) and stale_after > 0):
            raise ConfigError(f"http_stale_after must be a positive number, not {stale_after}")
        if max_connections < 1 or not (request_timeout > 0):
            raise ConfigError("the HTTP endpoint needs max_connections >= 1 and a timeout > 0")
        self._stale_after = float(stale_after)
        self._max_connections = max_connections
        self._request_timeout = float(request_timeout)
        self._latest = _Latest(self._stale_after)
        self._pages = dict(pages or {})
        self._health = health
        self._device_name = device_name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address once started (the real port when 0 was asked), else the configured."""
        if self._server is None:
            return self._host, self._port
        host, port = self._server.server_address[:2]
        return host, port

    def start(self) -> None:
        """Bind and serve in a thread of its own; SinkError if the address cannot be used."""
        if self._server is not None:
            raise SinkError("the HTTP endpoint is already running")
        where = _show_address(self._host, self._port)
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM
            )[0]
        except (OSError, IndexError) as error:
            raise SinkError(f"cannot listen on {where} (http_listen): {error}") from None
        try:
            server = _Server(
                sockaddr,
                family,
                self._latest,
                self._stale_after,
                self._max_connections,
                self._request_timeout,
                self._pages,
                self._health,
            )
        except OSError as error:
            raise SinkError(_bind_error(where, error)) from None
        server.device_name = self._device_name
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_until_stopped,
            name="http-endpoint",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "HTTP endpoint on http://%s/ (readings stale after %g s)",
            _show_address(*self.address),
            self._stale_after,
        )

    def publish(self, values: Values) -> None:
        """Serve ``values`` from now on: swaps a reference (the first request renders them)."""
        self._latest.set(values)

    def close(self) -> None:
        """Stop serving, drop every connection, free the port and join the threads."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stop()
        thread.join()  # no new connections from here on
        handlers = server.connections.shut_all()
        server.server_close()
        deadline = time.monotonic() + 2.0
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))
        logger.debug("HTTP endpoint closed")
