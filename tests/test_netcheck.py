"""The host rule, CA file words and TLS explanations that every network sink shares.

The TLS errors are real: handshakes with a server on 127.0.0.1 that has a self-signed
certificate, that speaks plain text, or that hangs up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from iskra_me162.errors import ConfigError
from iskra_me162.sinks import netcheck
from iskra_me162.sinks.domoticz_client import parse_domoticz_server
from iskra_me162.sinks.http import parse_listen
from iskra_me162.sinks.mqtt_messages import check_host as check_mqtt_host

ADVICE = netcheck.TlsAdvice(other_name="FIX-NAME", untrusted="FIX-CA", not_tls="FIX-PLAIN")
PEER = "the test server at 127.0.0.1"

GOOD = [
    "localhost",
    "domoticz.local",
    "domoticz.local.",  # a fully qualified name may end in a dot
    "my_broker",  # underscores: Docker's and some routers' DNS serve such names
    "a-b.c-d",
    "x" * 63 + ".example",
    "192.168.1.10",
    "0.0.0.0",
    "::1",
    "fe80::1",
    "2001:db8::8:800:200c:417a",
]
BAD = [
    ("my host", "neither an IP address nor a host name"),
    ("host!", "neither an IP address nor a host name"),
    ("-host", "neither an IP address nor a host name"),
    ("host-", "neither an IP address nor a host name"),
    ("a..b", "neither an IP address nor a host name"),
    (".host", "neither an IP address nor a host name"),
    ("x" * 64 + ".example", "neither an IP address nor a host name"),
    (".".join(["abcdefgh"] * 30), "neither an IP address nor a host name"),  # 269 characters
    ("bücher.de", "neither an IP address nor a host name"),  # write the xn-- form
    ("192.168.1.300", "is not an IPv4 address"),
    ("1.2.3", "is not an IPv4 address"),
    ("1234", "is not an IPv4 address"),
    ("fe80::zz", "is not an IPv6 address"),
    ("1:2:3:4:5:6:7:8:9", "is not an IPv6 address"),
    ("", "empty"),
]


@pytest.mark.parametrize("host", GOOD)
def test_good_hosts(host):
    assert netcheck.check_host(host) == host


@pytest.mark.parametrize(("host", "message"), BAD)
def test_bad_hosts_are_named_in_the_message(host, message):
    with pytest.raises(ValueError, match=message) as caught:
        netcheck.check_host(host)
    if host:
        assert repr(host) in str(caught.value)


def _accepts(check: Callable[[], object]) -> bool:
    try:
        check()
    except (ValueError, ConfigError):
        return False
    return True


@pytest.mark.parametrize("host", GOOD + [host for host, _ in BAD if host and " " not in host])
def test_every_sink_takes_the_same_hosts(host):
    # Domoticz (domoticzserver), MQTT (mqtt_host) and the HTTP endpoint (http_listen) must not
    # disagree about what a host is: one rule, netcheck.check_host.
    expected = _accepts(lambda: netcheck.check_host(host))
    with_port = f"[{host}]:8080" if ":" in host else f"{host}:8080"
    assert _accepts(lambda: parse_domoticz_server(with_port)) is expected, "domoticzserver"
    assert _accepts(lambda: check_mqtt_host(host)) is expected, "mqtt_host"
    assert _accepts(lambda: parse_listen(with_port)) is expected, "http_listen"


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("broker!", "mqtt_host 'broker!' is neither an IP address nor a host name; write the"),
        ("10.0.0.256", "mqtt_host '10.0.0.256' is not an IPv4 address; write the broker's"),
        ("fe80::zz", "mqtt_host 'fe80::zz' is not an IPv6 address; write the broker's"),
    ],
)
def test_mqtt_host_names_what_is_wrong(host, message):
    with pytest.raises(ConfigError) as caught:
        check_mqtt_host(host)
    assert str(caught.value).startswith(message)


# --- CA files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made now with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_a_good_ca_file_makes_a_checking_context(certificate):
    context = netcheck.client_tls_context(certificate[0])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_without_a_ca_file_the_system_cas_are_used():
    context = netcheck.client_tls_context("")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ca_file_problems(tmp_path, certificate):
    not_pem = tmp_path / "hello.pem"
    not_pem.write_text("hello\n")
    key_only = tmp_path / "key.pem"
    shutil.copy(certificate[1], key_only)
    cases = {
        str(tmp_path / "gone.pem"): "no such file",
        str(tmp_path): "a directory, not a file",
        str(not_pem): "not a usable PEM CA certificate (",
        str(key_only): "not a usable PEM CA certificate (",
    }
    for path, words in cases.items():
        with pytest.raises(ValueError) as caught:
            netcheck.client_tls_context(path)
        assert str(caught.value).startswith(words), path
        assert path not in str(caught.value)  # the caller names the setting and the file


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_ca_file(tmp_path, certificate):
    locked = tmp_path / "locked.pem"
    shutil.copy(certificate[0], locked)
    locked.chmod(0)
    with pytest.raises(ValueError, match=r"^permission denied$"):
        netcheck.client_tls_context(str(locked))


# --- TLS errors, from real handshakes ------------------------------------------------------------


@contextlib.contextmanager
def server(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(5)
                serve(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(5)


def handshake_error(port: int, context: ssl.SSLContext, name: str = "127.0.0.1") -> ssl.SSLError:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name):
                pass
        except ssl.SSLError as error:
            return error
    raise AssertionError("the handshake succeeded")


def tls_server(certificate: tuple[str, str]) -> Callable[[socket.socket], None]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def serve(connection: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(connection, server_side=True).close()

    return serve


def test_an_untrusted_certificate(certificate):
    with server(tls_server(certificate)) as port:
        error = handshake_error(port, netcheck.client_tls_context(""))
    assert netcheck.explain_tls_error(error, PEER, ADVICE) == (
        f"the TLS certificate of {PEER} is not trusted (self-signed certificate); FIX-CA"
    )


@pytest.mark.parametrize("name", ["localhost", "127.0.0.2"])  # a host name, an IP address
def test_a_certificate_for_another_name(certificate, name):
    with server(tls_server(certificate)) as port:
        error = handshake_error(port, netcheck.client_tls_context(certificate[0]), name)
    message = netcheck.explain_tls_error(error, PEER, ADVICE)
    assert message.startswith(f"the TLS certificate of {PEER} is for another host name (")
    assert name in message and message.endswith("); FIX-NAME")


def test_a_peer_that_speaks_no_tls():
    def plain_http(connection: socket.socket) -> None:
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with server(plain_http) as port:
        error = handshake_error(port, netcheck.client_tls_context(""))
    assert netcheck.explain_tls_error(error, PEER, ADVICE) == (
        f"{PEER} does not speak TLS on this port (FIX-PLAIN)"
    )


def test_any_other_tls_failure_gives_openssls_reason(certificate):
    # A server that insists on TLS 1.3 and a client that offers at most TLS 1.2.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.minimum_version = ssl.TLSVersion.TLSv1_3

    def serve(connection: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(connection, server_side=True).close()

    client = netcheck.client_tls_context(certificate[0])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with server(serve) as port:
        error = handshake_error(port, client)
    message = netcheck.explain_tls_error(error, PEER, ADVICE)
    assert message == f"TLS with {PEER} failed ({error.reason})"
    assert error.reason  # OpenSSL's name for it, e.g. TLSV1_ALERT_PROTOCOL_VERSION


def test_a_name_check_done_by_the_library_itself():
    assert netcheck.explain_other_host_name("hostname 'a' doesn't match 'b'", PEER, ADVICE) == (
        f"the TLS certificate of {PEER} is for another host name (hostname 'a' doesn't match "
        "'b'); FIX-NAME"
    )
