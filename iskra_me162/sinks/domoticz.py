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
``requests`` is imported on the first request, so a configuration without Domoticz does not pay
for it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from iskra_me162.errors import SinkError
from iskra_me162.p1 import P1Calculator, P1Values
from iskra_me162.readout import Readout
from iskra_me162.state import DEFAULT_MAX_INTERVAL_S, DEFAULT_MAX_POWER_W, StateStore

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_X509_HOSTNAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH
_BODY_IN_LOG = 300  # characters of a response body in the debug log
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
    """The HTTP side: one ``udevice`` request per call, every failure a SinkError."""

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
        self._base_url = base_url
        self._username = username
        self._password = password
        self._ca_file = ca_file
        self._verify: bool | str = (ca_file or True) if verify_tls else False
        self._timeout = timeout
        self._session: requests.Session | None = None
        if not verify_tls and base_url.startswith("https:"):
            extra = f"; the CA file {ca_file} is not used" if ca_file else ""
            log.warning("TLS certificate of Domoticz at %s is not verified%s", base_url, extra)

    def __repr__(self) -> str:
        return f"DomoticzClient({self._base_url!r}, username={self._username!r})"

    def udevice(self, idx: int, svalue: str, nvalue: int = 0) -> None:
        """Send one device update; return when Domoticz said ``"status": "OK"``."""
        url = (
            f"{self._base_url}/json.htm?type=command&param=udevice"
            f"&idx={idx}&nvalue={nvalue}&svalue={svalue}"
        )
        auth = f" as user {self._username!r}" if self._username else ""
        log.debug("GET %s%s", url, auth)
        response = self._get(url)
        body = response.text
        log.debug("HTTP %d from Domoticz: %s", response.status_code, body[:_BODY_IN_LOG])
        self._check(response, idx)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _get(self, url: str) -> requests.Response:
        # Lazily: a configuration without Domoticz never loads requests.
        import requests
        from urllib3.exceptions import InsecureRequestWarning

        if self._session is None:
            session = requests.Session()
            # No proxies, .netrc or REQUESTS_CA_BUNDLE from the environment: what the config
            # says is what happens, and the credentials go to Domoticz and nowhere else.
            session.trust_env = False
            if self._username:
                # requests' auth= sends the header with the first request, no challenge needed.
                # As UTF-8 bytes: requests would encode text as Latin-1, and then a password
                # with an umlaut never matches the one Domoticz's web UI stored (UTF-8).
                session.auth = (self._username.encode("utf-8"), self._password.encode("utf-8"))
            self._session = session
        try:
            with warnings.catch_warnings():
                if self._verify is False:  # asked for explicitly and logged once, not per request
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                return self._session.get(
                    url, timeout=(self._timeout, self._timeout), verify=self._verify
                )
        except requests.exceptions.SSLError as error:
            raise SinkError(self._tls_message(error)) from error
        except requests.exceptions.ConnectTimeout as error:
            raise SinkError(
                f"Domoticz at {self._base_url} did not accept a connection within "
                f"{self._timeout:g} s"
            ) from error
        except requests.exceptions.ReadTimeout as error:
            raise SinkError(
                f"Domoticz at {self._base_url} did not answer within {self._timeout:g} s"
            ) from error
        except requests.exceptions.ConnectionError as error:
            raise SinkError(
                f"cannot reach Domoticz at {self._base_url}: {_connection_reason(error)}"
            ) from error
        except requests.exceptions.RequestException as error:
            raise SinkError(
                f"request to Domoticz at {self._base_url} failed ({type(error).__name__})"
            ) from error
        except OSError as error:  # e.g. the CA file vanished: requests raises a bare OSError
            raise SinkError(
                f"cannot talk to Domoticz at {self._base_url}: {error.strerror or 'TLS set-up'} "
                f"(CA file {self._ca_file or 'none'})"
            ) from error

    def _tls_message(self, error: Exception) -> str:
        where = f"Domoticz at {self._base_url}"
        verification = _find(error, ssl.SSLCertVerificationError)
        if verification is not None:
            detail = getattr(verification, "verify_message", "") or "certificate not trusted"
            if getattr(verification, "verify_code", 0) == _X509_HOSTNAME_MISMATCH:
                return (
                    f"the TLS certificate of {where} is for another host name ({detail}); "
                    "use the host name the certificate was made for"
                )
            return (
                f"the TLS certificate of {where} is not trusted ({detail}); "
                "give its CA certificate as the Domoticz CA file, "
                "or turn TLS verification off explicitly"
            )
        ssl_error = _find(error, ssl.SSLError)
        reason = getattr(ssl_error, "reason", None) or "handshake failed"
        if reason == "WRONG_VERSION_NUMBER":
            return f"{where} does not speak TLS (is it plain http://?)"
        if self._ca_file and getattr(ssl_error, "library", None) in ("X509", "PEM"):
            return f"cannot use the Domoticz CA file {self._ca_file} ({reason})"
        return f"TLS with {where} failed ({reason})"

    def _check(self, response: requests.Response, idx: int) -> None:
        code = response.status_code
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
            document = response.json()
        except ValueError:
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


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and urllib3's wrapped ``reason``s, each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((link for link in _chain(error) if isinstance(link, kind)), None)


def _connection_reason(error: BaseException) -> str:
    """A stable, human cause for a failed connection (no addresses, ports of the OS, objects)."""
    for link in _chain(error):
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (is Domoticz running, is the port right?)"
        if isinstance(link, socket.gaierror):
            return "host name not found"
        if type(link).__name__ == "NameResolutionError":
            return "host name not found"
        if type(link).__name__ == "RemoteDisconnected":
            return "the connection was closed without an answer"
        if isinstance(link, ConnectionResetError):
            return "the connection was reset"
        if isinstance(link, OSError) and link.strerror:
            return link.strerror
    return "connection failed"


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
