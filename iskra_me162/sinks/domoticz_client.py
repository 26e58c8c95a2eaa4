"""The HTTP side of the Domoticz sink: the server setting, and one ``udevice`` GET per update.

:func:`parse_domoticz_server` turns the ``domoticzserver`` setting into a base URL (the config
parser uses it to validate). :class:`DomoticzClient` sends updates with ``requests``, on one
``Session``: urllib3 keeps the connection to Domoticz open between updates and opens a new one
when Domoticz closed it while idle. Every failure becomes a one-line
:class:`~iskra_me162.errors.SinkError` whose text depends only on the cause (the daemon logs a
line per change of message).

Credentials travel only in the Authorization header, sent with the first request (Domoticz
never sends a WWW-Authenticate challenge): the URL, the logs and the error messages never
contain them, and redirects are not followed, so the header goes to the configured address
and nowhere else.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import ssl
import warnings
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
import urllib3
from requests.auth import HTTPBasicAuth

from iskra_me162.errors import SinkError
from iskra_me162.sinks import netcheck

log = logging.getLogger(__name__)

_BODY_IN_LOG = 300  # bytes of a response body in the debug log
_MAX_BODY = 64 * 1024  # a udevice answer is ~50 bytes, an error page a few kB
_CHUNK = 8 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_Answer = tuple[int, str | None, bytes | None]  # status, Location header, body (None: too long)
_HEADERS = {
    "User-Agent": "iskra-me162",
    "Accept": "application/json",
    # Uncompressed: the answers are tiny, and the size cap then holds for the bytes on the wire.
    "Accept-Encoding": "identity",
}
_PLAIN_HTTP_HINT = (
    "Domoticz 2023.1 and later refuse Basic auth over plain HTTP unless "
    '"Allow Basic-Auth authentication over plain HTTP" is enabled '
    "(Setup > Settings > Security); or use an https:// URL"
)
_TLS_ADVICE = netcheck.TlsAdvice(
    other_name="use the host name the certificate was made for",
    untrusted=(
        "give its CA certificate as the Domoticz CA file, or turn TLS verification off explicitly"
    ),
    not_tls="is it plain http://?",
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
    # Before anything else, as every later message repeats the setting.
    if "@" in re.split(r"[/?#]", text.partition("://")[2], maxsplit=1)[0]:
        raise ValueError(
            "the Domoticz server must not contain a user name or password; "
            "set the Domoticz username and password settings instead"
        )
    try:
        parts = urlsplit(text)
    except ValueError:  # a bracketed host that is no IPv6 address: "[fe80::zz]:8080"
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has no valid host name; {expected}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"the Domoticz server has scheme {parts.scheme!r}; {expected}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has a query or fragment; {expected}"
        )
    host = parts.hostname or ""
    try:
        netcheck.check_host(host)
    except ValueError:
        raise ValueError(
            f"the Domoticz server {value.strip()!r} has no valid host name; {expected}"
        ) from None
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


class DomoticzClient:
    """One ``udevice`` request per call, on one ``requests.Session``; every failure a SinkError.

    No proxies, ``.netrc`` or CA variables from the environment (``trust_env`` off): what the
    config says is what happens, and the credentials go to Domoticz and nowhere else. Without
    a CA file, certificates are checked against requests' CA bundle (certifi; on Debian that is
    the system's, /etc/ssl/certs).
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
        self._base_url = base_url
        self._username = username
        # As UTF-8 bytes: requests encodes text credentials as Latin-1, so a password with an
        # umlaut would never match the one Domoticz's web UI stored (UTF-8), and one with a
        # character outside Latin-1 (€, Cyrillic) would raise UnicodeEncodeError.
        self._auth = HTTPBasicAuth(username.encode(), password.encode()) if username else None
        self._https = base_url.startswith("https:")
        self._ca_file = ca_file if self._https and verify_tls else ""
        self._verify: bool | str = (ca_file or True) if verify_tls else False
        self._timeout = timeout
        self._session: requests.Session | None = None
        if not verify_tls and self._https:
            extra = f"; the CA file {ca_file} is not used" if ca_file else ""
            log.warning("TLS certificate of Domoticz at %s is not verified%s", base_url, extra)
            # Asked for explicitly and logged once, here: not a warning per request. Only
            # requests made without verification emit this warning, so nothing else is hidden.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

    def __repr__(self) -> str:
        return f"DomoticzClient({self._base_url!r}, username={self._username!r})"

    def udevice(self, idx: int, svalue: str, nvalue: int = 0) -> None:
        """Send one device update; return when Domoticz said ``"status": "OK"``."""
        query = f"type=command&param=udevice&idx={idx}&nvalue={nvalue}&svalue={svalue}"
        auth = f" as user {self._username!r}" if self._username else ""
        log.debug("GET %s/json.htm?%s%s", self._base_url, query, auth)
        try:
            status, location, body = self._get(f"{self._base_url}/json.htm?{query}")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            if self._ca_file:
                self._check_ca_file()  # a CA file gone or broken since: say that, not the symptom
            raise self._failure(error) from error
        log.debug(
            "HTTP %d from Domoticz: %s",
            status,
            (body or b"")[:_BODY_IN_LOG].decode("utf-8", "replace"),
        )
        if status in _REDIRECTS:
            raise SinkError(self._redirect_message(status, location))
        self._check(status, body, idx)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # --- the request -------------------------------------------------------------------------

    def _get(self, url: str) -> _Answer:
        """Status, Location header and body (None: longer than _MAX_BODY) of ``GET url``."""
        session = self._session or self._new_session()
        try:
            return self._exchange(session, url)
        except requests.ConnectionError as error:
            if not _closed_by_peer(error):
                raise
            # Domoticz closed the kept connection just as this update went out: urllib3
            # replaces a pooled connection that was closed while idle, but cannot see a close
            # that crosses the request. One more try, on a new connection (the failed one is
            # discarded); an update sent twice only repeats the same values.
            log.debug("Domoticz closed the connection without an answer; trying once more")
            return self._exchange(session, url)

    def _exchange(self, session: requests.Session, url: str) -> _Answer:
        with session.get(
            url,
            timeout=(self._timeout, self._timeout),
            # Not followed: the config names the server, and the Authorization header must not
            # go anywhere else (requests would strip it only on a change of host).
            allow_redirects=False,
            # Streamed, so that an answer far larger than any Domoticz sends is not read whole.
            stream=True,
        ) as response:
            # A body cut short of its Content-Length is an error, not a shorter answer: the
            # default of urllib3 2.x, not of 1.26 (Debian 12), so that both say the same.
            response.raw.enforce_content_length = True
            return response.status_code, response.headers.get("Location"), _read_capped(response)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxies, .netrc, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
        session.headers.update(_HEADERS)
        session.auth = self._auth
        session.verify = self._verify
        self._session = session
        return session

    def _check_ca_file(self) -> None:
        try:
            netcheck.client_tls_context(self._ca_file)
        except ValueError as problem:
            raise SinkError(f"cannot use the Domoticz CA file {self._ca_file}: {problem}") from None

    def _failure(self, error: BaseException) -> SinkError:
        """The one-line SinkError for what requests, urllib3 or the socket raised."""
        where = f"Domoticz at {self._base_url}"
        if isinstance(error, requests.ConnectTimeout):
            return SinkError(f"{where} did not accept a connection within {self._timeout:g} s")
        if _find(error, urllib3.exceptions.ReadTimeoutError, TimeoutError) is not None:
            return SinkError(f"{where} did not answer within {self._timeout:g} s")
        tls = _find(error, ssl.SSLError)
        if isinstance(tls, ssl.SSLError):
            return SinkError(netcheck.explain_tls_error(tls, where, _TLS_ADVICE))
        mismatch = _other_host_name(error)
        if mismatch is not None:
            return SinkError(netcheck.explain_other_host_name(mismatch, where, _TLS_ADVICE))
        if _find(error, socket.gaierror) is not None:  # urllib3 2.x: in a NameResolutionError
            return SinkError(f"cannot reach {where}: host name not found")
        if _find(error, ConnectionRefusedError) is not None:
            return SinkError(
                f"cannot reach {where}: connection refused (is Domoticz running, is the port "
                "right?)"
            )
        if _find(error, http.client.RemoteDisconnected) is not None:
            return SinkError(f"cannot reach {where}: the connection was closed without an answer")
        if _find(error, ConnectionResetError) is not None:
            return SinkError(f"cannot reach {where}: the connection was reset")
        if _find(error, BrokenPipeError) is not None:
            return SinkError(f"cannot reach {where}: the connection was closed while sending")
        invalid = _find(error, http.client.HTTPException)
        if invalid is not None:  # BadStatusLine, IncompleteRead, LineTooLong, ...
            return SinkError(f"{where} sent no valid HTTP answer ({type(invalid).__name__})")
        if _find(error, requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError):
            return SinkError(f"{where} sent no valid HTTP answer")
        system = next(
            (link for link in _chain(error) if isinstance(link, OSError) and link.strerror), None
        )
        if isinstance(system, OSError):
            return SinkError(f"cannot reach {where}: {system.strerror}")
        return SinkError(f"the request to {where} failed ({type(error).__name__})")

    def _redirect_message(self, status: int, location: str | None) -> str:
        # Only scheme, host and path of the target are shown (no query, no user or password).
        target = urlsplit(location or "")
        shown = f"{target.scheme}://{target.hostname}{target.path}" if target.hostname else "?"
        return (
            f"Domoticz at {self._base_url} redirects to {shown[:120]} (HTTP {status}); "
            "set the Domoticz server to the address it redirects to"
        )

    def _check(self, code: int, body: bytes | None, idx: int) -> None:
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
            document = json.loads(body) if body is not None else None
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


def _read_capped(response: requests.Response) -> bytes | None:
    """The body, or None when it is longer than _MAX_BODY: then it is not read on, and closing
    the response discards the connection (one with unread bytes cannot carry the next request),
    while a body read to its end returns the connection to the pool for the next update."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        return None
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if len(body) > _MAX_BODY:
            return None
    return bytes(body)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps, each once: causes and contexts, urllib3's
    ``reason`` (MaxRetryError) and exceptions passed as arguments (requests wraps that way)."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None))
        pending.extend(link for link in linked if isinstance(link, BaseException))
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _find(error: BaseException, *kinds: type[BaseException]) -> BaseException | None:
    return next((link for link in _chain(error) if isinstance(link, kinds)), None)


def _other_host_name(error: BaseException) -> str | None:
    """The detail of urllib3 1.26's own host name check ("hostname 'a' doesn't match 'b'"): it
    raises ``urllib3.util.ssl_match_hostname.CertificateError``, a ValueError (urllib3 2.x
    leaves the check to ssl, whose SSLCertVerificationError explain_tls_error reads)."""
    found = next(
        (
            link
            for link in _chain(error)
            if type(link).__name__ == "CertificateError" and isinstance(link, ValueError)
        ),
        None,
    )
    return str(found)[:200] if found is not None else None


def _closed_by_peer(error: BaseException) -> bool:
    """Whether the server closed or reset the connection instead of answering."""
    if _find(error, ssl.SSLError) is not None:
        return False  # a TLS failure, not a closed connection: it would fail again
    return _find(error, ConnectionResetError, BrokenPipeError) is not None
