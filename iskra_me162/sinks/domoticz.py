"""Domoticz P1 Smart Meter device.

One request per update, in the form Domoticz 2023.2 and later require:
``json.htm?type=command&param=udevice&idx=N&nvalue=0&svalue=U1;U2;R1;R2;CONS;PROD``.

Domoticz answers a malformed svalue with ``"status": "OK"`` and only shows "Invalid!" on the
device, so the values are made correct before sending (:class:`~iskra_me162.p1.P1Values` cannot
hold anything but six non-negative integers). Every failure becomes a one-line
:class:`~iskra_me162.errors.SinkError` whose text depends only on the cause (the daemon logs a
line per change of message); the next cycle sends the then current counters, so a failed push
loses nothing.

Credentials travel only in the Authorization header, sent with the first request (Domoticz never
sends a WWW-Authenticate challenge): the URL, the logs and the error messages never contain them.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import re
import select
import socket
import ssl
from urllib.parse import urlsplit

from iskra_me162.errors import SinkError
from iskra_me162.p1 import P1Calculator, P1Values
from iskra_me162.readout import Readout
from iskra_me162.state import DEFAULT_MAX_INTERVAL_S, DEFAULT_MAX_POWER_W, StateStore

log = logging.getLogger(__name__)

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_X509_HOSTNAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH
_BODY_IN_LOG = 300  # bytes of a response body in the debug log
_MAX_BODY = 64 * 1024  # a udevice answer is ~50 bytes, an error page a few kB
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# The peer closed or reset the connection: on a kept connection, worth one more try.
_CLOSED_BY_PEER = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_USER_AGENT = "iskra-me162"
_PLAIN_HTTP_HINT = (
    "Domoticz 2023.1 and later refuse Basic auth over plain HTTP unless "
    '"Allow Basic-Auth authentication over plain HTTP" is enabled '
    "(Setup > Settings > Security); or use an https:// URL"
)


def parse_domoticz_server(value: str) -> str:
    """The base URL (no trailing slash) for ``host:port`` or an ``http(s)://`` URL.

    A path after the host is kept as a prefix for a reverse proxy (``https://h/domoticz``). A
    trailing ``/json.htm`` is dropped. ValueError with a clear message on anything else; the
    message never repeats a user name or password written into the URL.
    """
    text = value.strip()
    expected = "expected host:port or an http:// or https:// URL"
    if not text:
        raise ValueError(f"the Domoticz server is empty; {expected}")
    if any(char.isspace() for char in text):
        raise ValueError(f"the Domoticz server {text!r} contains white space; {expected}")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ValueError(
            "the Domoticz server must not contain a user name or password; "
            "set the Domoticz username and password settings instead"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"the Domoticz server has scheme {parts.scheme!r}; {expected}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has a query or fragment; {expected}"
        )
    host = parts.hostname or ""
    if not _valid_host(host):
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has no valid host name; {expected}"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has an invalid port (1-65535); {expected}"
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/json.htm"):
        path = path[: -len("/json.htm")].rstrip("/")
    return f"{scheme}://{netloc}{path}"


def _valid_host(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None and ".." not in host
    return True


class DomoticzClient:
    """The HTTP side: one ``udevice`` request per call, every failure a SinkError.

    Plain :mod:`http.client` on one keep-alive connection: Domoticz needs a GET with a Basic
    auth header and a small JSON answer, nothing more, and ``requests`` with what it loads would
    cost 7 MiB of the daemon's 30 MiB budget on a Pi Zero (docs/performance.rst). No proxies,
    ``.netrc`` or CA variables from the environment: what the config says is what happens, and
    the credentials go to Domoticz and nowhere else.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str = "",
        password: str = "",
        ca_file: str = "",
        verify_tls: bool = True,
        timeout: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("the Domoticz timeout must be positive")
        parts = urlsplit(base_url)
        self._base_url = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path_prefix = parts.path
        self._username = username
        # Sent with the first request (Domoticz never challenges). As UTF-8: Domoticz's web UI
        # stores the password as UTF-8, so a password with an umlaut sent as Latin-1 never
        # matches.
        self._authorization = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            if username
            else ""
        )
        self._ca_file = ca_file
        self._verify_tls = verify_tls
        self._timeout = timeout
        self._tls_context: ssl.SSLContext | None = None
        self._connection: http.client.HTTPConnection | None = None
        if not verify_tls and self._https:
            extra = f"; the CA file {ca_file} is not used" if ca_file else ""
            log.warning("TLS certificate of Domoticz at %s is not verified%s", base_url, extra)

    def __repr__(self) -> str:
        return f"DomoticzClient({self._base_url!r}, username={self._username!r})"

    def udevice(self, idx: int, svalue: str, nvalue: int = 0) -> None:
        """Send one device update; return when Domoticz said ``"status": "OK"``."""
        target = (
            f"{self._path_prefix}/json.htm?type=command&param=udevice"
            f"&idx={idx}&nvalue={nvalue}&svalue={svalue}"
        )
        auth = f" as user {self._username!r}" if self._username else ""
        log.debug("GET %s%s%s", self._base_url, target[len(self._path_prefix) :], auth)
        status, body = self._get(target)
        log.debug(
            "HTTP %d from Domoticz: %s", status, body[:_BODY_IN_LOG].decode("utf-8", "replace")
        )
        self._check(status, body, idx)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # --- the request -------------------------------------------------------------------------

    def _get(self, target: str) -> tuple[int, bytes]:
        """Status and body of ``GET target``, on the kept connection if Domoticz kept it open."""
        if self._connection is not None and _dropped(self._connection):
            self.close()  # Domoticz closed the idle connection since the last update
        reused = self._connection is not None
        try:
            try:
                return self._exchange(target)
            except _CLOSED_BY_PEER:
                if not reused:
                    raise
                # Domoticz closed the kept connection just as this request went out: one more
                # try on a new connection (an update sent twice only repeats the same values).
                log.debug("kept connection to Domoticz was closed; connecting again")
                self.close()
                return self._exchange(target)
        except _CLOSED_BY_PEER as error:
            self.close()
            raise self._failure(error, "did not answer") from error
        except BaseException:
            self.close()  # never reuse a connection in an unknown state
            raise

    def _exchange(self, target: str) -> tuple[int, bytes]:
        connection = self._connection or self._connect()
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            if response.length is not None and response.length > _MAX_BODY:
                body = b""  # not read at all: no Domoticz answer is that long
            else:
                body = response.read(_MAX_BODY if response.length is None else None)
        except _CLOSED_BY_PEER:
            raise  # _get may try once more on a new connection
        except OSError as error:
            raise self._failure(error, "did not answer") from error
        except http.client.HTTPException as error:
            raise SinkError(
                f"Domoticz at {self._base_url} sent no valid HTTP answer ({type(error).__name__})"
            ) from error
        if response.will_close or not response.isclosed():
            # Closed by Domoticz, or more than _MAX_BODY (no Domoticz answer is that long): the
            # rest is not read, and a connection with unread bytes cannot carry the next request.
            self.close()
        if response.status in _REDIRECTS:
            raise SinkError(self._redirect_message(response.status, response.getheader("Location")))
        return response.status, body

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.connect()
        except OSError as error:
            raise self._failure(error, "did not accept a connection") from error
        self._connection = connection
        return connection

    def _failure(self, error: OSError, when_silent: str) -> SinkError:
        """The one-line SinkError for a socket or TLS error; ``when_silent`` says what a
        timeout means at that step ("did not answer", "did not accept a connection")."""
        if isinstance(error, TimeoutError):
            return SinkError(
                f"Domoticz at {self._base_url} {when_silent} within {self._timeout:g} s"
            )
        if isinstance(error, ssl.SSLError):
            return SinkError(self._tls_message(error))
        return SinkError(f"cannot reach Domoticz at {self._base_url}: {_connection_reason(error)}")

    def _context(self) -> ssl.SSLContext:
        """The TLS settings, made once; a CA file that cannot be read is tried again next time."""
        if self._tls_context is None:
            if not self._verify_tls:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                try:
                    context = ssl.create_default_context(cafile=self._ca_file or None)
                except ssl.SSLError as error:
                    reason = error.reason or "not a PEM certificate"
                    raise SinkError(
                        f"cannot use the Domoticz CA file {self._ca_file} ({reason})"
                    ) from error
                except OSError as error:
                    raise SinkError(
                        f"cannot use the Domoticz CA file {self._ca_file} "
                        f"({error.strerror or 'unreadable'})"
                    ) from error
            self._tls_context = context
        return self._tls_context

    def _redirect_message(self, status: int, location: str | None) -> str:
        # Not followed: the config names the server, and the Authorization header must not go
        # anywhere else. Only scheme, host and path of the target are shown (no query, no user).
        target = urlsplit(location or "")
        shown = f"{target.scheme}://{target.hostname}{target.path}" if target.hostname else "?"
        return (
            f"Domoticz at {self._base_url} redirects to {shown[:120]} (HTTP {status}); "
            "set the Domoticz server to the address it redirects to"
        )

    def _tls_message(self, error: ssl.SSLError) -> str:
        where = f"Domoticz at {self._base_url}"
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = error.verify_message or "certificate not trusted"
            if error.verify_code == _X509_HOSTNAME_MISMATCH:
                return (
                    f"the TLS certificate of {where} is for another host name ({detail}); "
                    "use the host name the certificate was made for"
                )
            return (
                f"the TLS certificate of {where} is not trusted ({detail}); "
                "give its CA certificate as the Domoticz CA file, "
                "or turn TLS verification off explicitly"
            )
        reason = error.reason or "handshake failed"
        if reason == "WRONG_VERSION_NUMBER":
            return f"{where} does not speak TLS (is it plain http://?)"
        return f"TLS with {where} failed ({reason})"

    def _check(self, code: int, body: bytes, idx: int) -> None:
        where = f"Domoticz at {self._base_url}"
        if code == 401:
            if self._username:
                raise SinkError(
                    f"{where} refused the login (HTTP 401): check the Domoticz username and "
                    f"password; {_PLAIN_HTTP_HINT}"
                )
            raise SinkError(
                f"{where} wants a login (HTTP 401): set the Domoticz username and password; "
                f"{_PLAIN_HTTP_HINT}"
            )
        if code == 403:
            raise SinkError(
                f"{where} forbids the update (HTTP 403): the Domoticz user needs the right to "
                f"change device {idx} (not a viewer), or this host is not allowed"
            )
        if code == 404:
            raise SinkError(
                f"{where} has no /json.htm (HTTP 404): not Domoticz, or a wrong path prefix in "
                "the server URL"
            )
        if code != 200:
            raise SinkError(f"{where} answered HTTP {code}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # also not UTF-8, or nested too deep
            document = None
        if not isinstance(document, dict):
            raise SinkError(
                f"{where} answered HTTP 200 without a JSON object: is this Domoticz "
                "(check the path prefix)?"
            )
        status = document.get("status")
        if status == "OK":
            return
        if status == "ERR":
            raise SinkError(
                f"{where} rejected the update of idx {idx} (status ERR): that idx probably does "
                "not exist or is not a P1 Smart Meter device"
            )
        if status == "ERROR":
            raise SinkError(
                f"{where} does not know the udevice command (status ERROR): is it Domoticz?"
            )
        shown = repr(status)[:40]
        raise SinkError(f"{where} answered status {shown}, expected OK")


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether a kept connection is unusable: gone, or readable while no answer is due (then
    Domoticz closed it, or sent something nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _connection_reason(error: OSError) -> str:
    """A stable, human cause for a failed connection (no addresses, ports of the OS, objects)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is Domoticz running, is the port right?)"
    if isinstance(error, socket.gaierror):
        return "host name not found"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(error, ConnectionResetError):
        return "the connection was reset"
    if isinstance(error, BrokenPipeError):
        return "the connection was closed while sending"
    return error.strerror or "connection failed"


class DomoticzSink:
    """Pushes P1 values of readouts to one Domoticz P1 Smart Meter device.

    ``max_power_w``: a counter change faster than this is a fault, not power (see
    :data:`~iskra_me162.state.DEFAULT_MAX_POWER_W`). ``max_interval_s``: power from counter
    deltas is computed over at most this long (None: no limit). ``boot_id``: for tests only.
    """

    name = "domoticz"

    def __init__(
        self,
        server: str,
        device_index: int,
        username: str = "",
        password: str = "",
        ca_file: str = "",
        verify_tls: bool = True,
        timeout: float = 10.0,
        swap_tariffs: bool = False,
        state_path: str | None = None,
        *,
        max_power_w: int = DEFAULT_MAX_POWER_W,
        max_interval_s: float | None = DEFAULT_MAX_INTERVAL_S,
        boot_id: str | None = None,
    ) -> None:
        # 0 is no Domoticz idx, but it is left to Domoticz to say so (status ERR, a clear
        # SinkError) rather than failing start-up here.
        if type(device_index) is not int or device_index < 0:
            raise ValueError(
                f"the Domoticz device index must be a non-negative integer: {device_index!r}"
            )
        self._device_index = device_index
        self._client = DomoticzClient(
            parse_domoticz_server(server),
            username=username,
            password=password,
            ca_file=ca_file,
            verify_tls=verify_tls,
            timeout=timeout,
        )
        self._p1 = P1Calculator(
            swap_tariffs=swap_tariffs,
            state=StateStore(state_path, boot_id=boot_id),
            max_power_w=max_power_w,
            max_interval_s=max_interval_s,
        )

    def __repr__(self) -> str:
        return f"DomoticzSink({self._client!r}, device_index={self._device_index})"

    def preview(self, readout: Readout) -> P1Values | None:
        """What would be sent for ``readout`` now (None: waiting for a second readout).

        No side effects; SinkError when the readout cannot make a correct update.
        """
        return self._p1.preview(readout)

    def observe(self, readout: Readout) -> None:
        """Feed a readout that is not pushed into the power computation. Never raises."""
        try:
            self._p1.use(readout)
        except SinkError as error:
            log.debug("readout not usable for power: %s", error)

    def publish(self, readout: Readout) -> P1Values | None:
        """Send ``readout``'s values; return them, or None when power still waits for a second
        readout (nothing sent). SinkError when the readout is unusable or Domoticz failed."""
        values = self._p1.use(readout)
        if values is None:
            return None
        self._client.udevice(self._device_index, values.svalue)
        self._p1.record_sent(readout, values)
        return values

    def close(self) -> None:
        self._client.close()
