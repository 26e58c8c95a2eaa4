"""The Domoticz HTTP client against a real HTTP(S) server on 127.0.0.1 (tests/httpstub.py).

The server setting, Basic auth, every failure's one-line message, TLS, the environment, and the
password's absence from URLs, logs and errors. How the connection itself is handled (kept,
closed by Domoticz, redirects, oversized or malformed answers) is in
tests/test_domoticz_connection.py; what the sink sends is in tests/test_domoticz.py.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from iskra_me162.errors import SinkError
from iskra_me162.sinks.domoticz_client import DomoticzClient, parse_domoticz_server
from tests.httpstub import DomoticzStub

USER = "meterman"
PASSWORD = "pa55-W0rd:with;odd&chars%"  # distinctive, with characters that URLs would mangle
IDX = 42
SVALUE = "8048375;10500;1250;0;908;0"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def stub():
    with DomoticzStub(devices={IDX}) as server:
        yield server


@pytest.fixture
def auth_stub():
    with DomoticzStub(username=USER, password=PASSWORD, devices={IDX}) as server:
        yield server


def client_for(server: str, **options: object) -> DomoticzClient:
    """A client for a ``domoticzserver`` setting, as the sink makes it."""
    options.setdefault("timeout", 5.0)
    return DomoticzClient(parse_domoticz_server(server), **options)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failure_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


def secret_forms(password: str = PASSWORD, user: str = USER) -> list[str]:
    """Every form in which the password could leak."""
    return [
        password,
        quote(password, safe=""),
        quote_plus(password),
        base64.b64encode(f"{user}:{password}".encode()).decode(),
        base64.b64encode(password.encode()).decode(),
    ]


# --- parse_domoticz_server --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "base"),
    [
        ("192.168.1.10:8080", "http://192.168.1.10:8080"),
        ("  domoticz.local:8080 ", "http://domoticz.local:8080"),
        ("domoticz", "http://domoticz"),
        ("http://Domoticz.Local:8080/", "http://domoticz.local:8080"),
        ("https://home.example.org", "https://home.example.org"),
        ("HTTPS://home.example.org:8443/domoticz/", "https://home.example.org:8443/domoticz"),
        ("https://proxy/a/b", "https://proxy/a/b"),
        ("http://host:8080/json.htm", "http://host:8080"),
        ("http://host/domoticz/json.htm", "http://host/domoticz"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("http://[fe80::1]/", "http://[fe80::1]"),
        ("my_domoticz:8080", "http://my_domoticz:8080"),  # Docker service names have these
    ],
)
def test_parse_domoticz_server(value, base):
    assert parse_domoticz_server(value) == base


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://host", "scheme 'ftp'"),
        ("http://", "no valid host"),
        ("host:port", "invalid port"),
        ("host:0", "invalid port"),
        ("host:70000", "invalid port"),
        ("host:", "invalid port"),
        ("http://host:8080?x=1", "query or fragment"),
        ("http://host#top", "query or fragment"),
        ("my host:8080", "white space"),
        ("host_name!:8080", "no valid host"),
        ("-host:8080", "no valid host"),
        ("a..b:8080", "no valid host"),
        ("192.168.1.300:8080", "no valid host"),  # digits and dots: an IPv4 address or nothing
        ("[fe80::zz]:8080", "no valid host"),
    ],
)
def test_parse_domoticz_server_rejects_garbage(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_domoticz_server(value)
    assert "host:port or an http:// or https:// URL" in str(caught.value)


@pytest.mark.parametrize(
    "server",
    [
        f"http://{USER}:{PASSWORD}@host:8080",
        f"{USER}:{PASSWORD}@host:8080",
        f"https://{USER}:{PASSWORD}@[fe80::zz]:8443/dz",  # also when the rest is wrong too
        f"ftp://{USER}:{PASSWORD}@host?x=1",
    ],
)
def test_credentials_in_the_url_are_refused_without_repeating_them(server):
    with pytest.raises(ValueError) as caught:
        parse_domoticz_server(server)
    assert "username and password settings" in str(caught.value)
    assert PASSWORD not in str(caught.value) and USER not in str(caught.value)


def test_parse_domoticz_server_is_still_importable_from_the_sink_module():
    # config.py imports it from there (until it imports it from domoticz_client).
    from iskra_me162.sinks import domoticz

    assert domoticz.parse_domoticz_server is parse_domoticz_server


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_timeout_must_be_positive(timeout):
    with pytest.raises(ValueError, match="timeout must be positive"):
        DomoticzClient("http://host:8080", timeout=timeout)


# --- the request ------------------------------------------------------------------------------


def test_one_get_with_the_update_in_the_query(stub):
    client = client_for(stub.server)
    client.udevice(IDX, SVALUE)
    client.close()
    (request,) = stub.requests
    assert request.method == "GET" and request.path == "/json.htm"
    assert request.raw_query == f"type=command&param=udevice&idx={IDX}&nvalue=0&svalue={SVALUE}"
    assert request.accepted and stub.svalue(IDX) == SVALUE
    assert request.headers["User-Agent"] == "iskra-me162"
    assert request.headers["Accept"] == "application/json"
    assert "Authorization" not in request.headers


def test_the_environment_changes_nothing(stub, tmp_path, monkeypatch):
    # Proxies, a .netrc with other credentials and CA bundle variables are what requests reads
    # from the environment by default; the config alone must decide. A proxy would get the
    # update (and the password), a .netrc's login would be sent to Domoticz.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password from-netrc\n")
    netrc.chmod(0o600)
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    client = client_for(stub.server)
    client.udevice(IDX, SVALUE)
    (request,) = stub.requests
    assert request.accepted
    assert "Authorization" not in request.headers  # not the .netrc's login


# --- authentication ---------------------------------------------------------------------------


def test_basic_auth_is_sent_up_front(auth_stub):
    client = client_for(auth_stub.server, username=USER, password=PASSWORD)
    client.udevice(IDX, SVALUE)
    client.udevice(IDX, "8048400;10500;1250;0;908;0")
    seen = auth_stub.requests
    assert len(seen) == 2  # no 401 round trip: the stub never challenges
    assert all(r.auth_user == USER and r.authorized and r.accepted for r in seen)


def test_no_request_carries_the_password_but_in_its_authorization_header(auth_stub):
    client = client_for(auth_stub.server, username=USER, password=PASSWORD)
    client.udevice(IDX, SVALUE)
    auth_stub.failure = "401"
    with pytest.raises(SinkError):
        client.udevice(IDX, SVALUE)
    assert len(auth_stub.requests) == 2
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for request in auth_stub.requests:
        assert request.headers["Authorization"] == expected
        others = [value for name, value in request.headers.items() if name != "Authorization"]
        for secret in secret_forms():
            assert secret not in request.path and secret not in request.raw_query
            assert all(secret not in value for value in others)


def test_wrong_password_is_a_401_with_a_hint(auth_stub):
    client = client_for(auth_stub.server, username=USER, password="wrong")
    with pytest.raises(SinkError) as caught:
        client.udevice(IDX, SVALUE)
    message = str(caught.value)
    assert "refused the login (HTTP 401)" in message
    assert "Allow Basic-Auth authentication over plain HTTP" in message
    assert "2023.1" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("zähler", "Schlüssel-Ärger"),  # Latin-1 would give other bytes than Domoticz's UTF-8
        ("счётчик", "пароль-€"),  # not Latin-1 at all: requests would raise UnicodeEncodeError
    ],
)
def test_non_ascii_user_and_password_are_sent_as_utf8(user, password):
    with DomoticzStub(username=user, password=password, devices={IDX}) as server:
        client_for(server.server, username=user, password=password).udevice(IDX, SVALUE)
        (request,) = server.requests
        assert request.auth_user == user and request.authorized and request.accepted


def test_missing_credentials_is_a_401(auth_stub):
    with pytest.raises(SinkError, match=r"wants a login \(HTTP 401\)"):
        client_for(auth_stub.server).udevice(IDX, SVALUE)


def test_fresh_install_refuses_right_basic_auth_over_plain_http():
    with DomoticzStub(
        username=USER, password=PASSWORD, devices={IDX}, basic_auth_over_http=False
    ) as server:
        client = client_for(server.server, username=USER, password=PASSWORD)
        with pytest.raises(SinkError, match="Allow Basic-Auth authentication over plain HTTP"):
            client.udevice(IDX, SVALUE)
        assert server.requests[0].auth_user == USER


def test_fresh_install_accepts_basic_auth_over_https(certificate):
    with DomoticzStub(
        username=USER,
        password=PASSWORD,
        devices={IDX},
        basic_auth_over_http=False,
        tls=certificate,
    ) as server:
        client = client_for(server.url, username=USER, password=PASSWORD, ca_file=certificate[0])
        client.udevice(IDX, SVALUE)
        assert server.requests[0].tls and server.requests[0].accepted


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("401", "HTTP 401"),
        ("403", "forbids the update (HTTP 403)"),
        ("404", "has no /json.htm (HTTP 404)"),
        ("500", "answered HTTP 500"),
        ("err", f"rejected the update of idx {IDX} (status ERR): that idx probably does not exist"),
        ("error", "does not know the udevice command (status ERROR)"),
        ("garbage", "HTTP 200 without a JSON object"),
    ],
)
def test_failures_become_stable_one_line_sink_errors(stub, failure, message):
    stub.failure = failure
    client = client_for(stub.server)
    messages = []
    for _ in range(2):
        with pytest.raises(SinkError) as caught:
            client.udevice(IDX, SVALUE)
        messages.append(str(caught.value))
    assert message in messages[0]
    assert messages[0] == messages[1]  # same cause, same text: the daemon logs it once
    assert "\n" not in messages[0]
    assert len(stub.requests) == 2  # an answer, even a refusal, is never sent again


def test_unknown_idx_is_err(stub):
    with pytest.raises(SinkError, match="not a P1 Smart Meter device"):
        client_for(stub.server).udevice(IDX + 1, SVALUE)
    assert stub.requests[0].body == '{"status": "ERR"}'


def test_timeout(stub):
    stub.failure = "timeout"
    client = client_for(stub.server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SinkError) as caught:
        client.udevice(IDX, SVALUE)
    assert time.monotonic() - started < 20  # generous: only "it did not wait for the answer"
    assert str(caught.value) == f"Domoticz at http://{stub.server} did not answer within 0.5 s"


def test_hang(stub):
    stub.failure = "hang"
    with pytest.raises(SinkError, match=r"did not answer within 0\.5 s"):
        client_for(stub.server, timeout=0.5).udevice(IDX, SVALUE)


def test_connection_timeout():
    # A listening socket whose backlog is full: the kernel drops further SYNs, so connect()
    # waits. Found by trying, as backlogs differ: skip where the connect still succeeds.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            time.sleep(0.2)
            with socket.socket() as probe:
                probe.settimeout(0.3)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.skip("this kernel accepts connections beyond the backlog")
            with pytest.raises(SinkError) as caught:
                client_for(f"127.0.0.1:{port}", timeout=0.5).udevice(IDX, SVALUE)
        finally:
            for filler in fillers:
                filler.close()
    assert str(caught.value) == (
        f"Domoticz at http://127.0.0.1:{port} did not accept a connection within 0.5 s"
    )


def test_connection_refused():
    port = closed_port()
    client = client_for(f"127.0.0.1:{port}")
    messages = []
    for _ in range(2):
        with pytest.raises(SinkError) as caught:
            client.udevice(IDX, SVALUE)
        messages.append(str(caught.value))
    assert messages[0] == (
        f"cannot reach Domoticz at http://127.0.0.1:{port}: "
        "connection refused (is Domoticz running, is the port right?)"
    )
    assert messages[0] == messages[1]


def test_unknown_host_name():
    with pytest.raises(SinkError) as caught:
        client_for("no-such-host.invalid:8080", timeout=2).udevice(IDX, SVALUE)
    assert str(caught.value) == (
        "cannot reach Domoticz at http://no-such-host.invalid:8080: host name not found"
    )


def test_reverse_proxy_path_prefix():
    with DomoticzStub(devices={IDX}, prefix="/domoticz") as server:
        assert server.url.endswith("/domoticz")
        client_for(server.url).udevice(IDX, SVALUE)
        assert server.requests[0].path == "/domoticz/json.htm"
        with pytest.raises(SinkError, match="wrong path prefix"):
            client_for(server.server).udevice(IDX, SVALUE)


def test_the_stub_is_strict_like_domoticz(stub):
    import requests

    def get(query: str, path: str = "/json.htm") -> requests.Response:
        return requests.get(f"http://{stub.server}{path}?{query}", timeout=5)

    assert get(f"type=devices&param=udevice&idx={IDX}&svalue=1").status_code == 404
    assert get("type=command&param=getdevices").json() == {"status": "ERROR"}
    assert get("type=command&param=udevice&idx=999&nvalue=0&svalue=1").json()["status"] == "ERR"
    assert get(f"type=command&param=udevice&idx={IDX}").json()["status"] == "ERR"
    assert get("type=command", path="/index.php").status_code == 404
    malformed = get(f"type=command&param=udevice&idx={IDX}&nvalue=0&svalue=1.5;2;3;4;-5;None")
    assert malformed.json()["status"] == "OK"  # as Domoticz: accepted, shown as "Invalid!"
    assert stub.requests[-1].svalue_well_formed is False
    assert stub.svalue(IDX) == "Invalid!"
    assert "WWW-Authenticate" not in get("type=command").headers


def test_stub_never_challenges(auth_stub):
    import requests

    response = requests.get(f"{auth_stub.url}/json.htm?type=command", timeout=5)
    assert response.status_code == 401
    assert "WWW-Authenticate" not in response.headers


# --- TLS --------------------------------------------------------------------------------------


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


@pytest.fixture
def tls_stub(certificate):
    with DomoticzStub(devices={IDX}, tls=certificate) as server:
        yield server


def test_self_signed_certificate_is_refused_by_default(tls_stub):
    client = client_for(tls_stub.url)
    with pytest.raises(SinkError) as caught:
        client.udevice(IDX, SVALUE)
    message = str(caught.value)
    assert message.startswith(f"the TLS certificate of Domoticz at {tls_stub.url} is not trusted")
    assert "self-signed certificate" in message
    assert "CA certificate" in message
    assert tls_stub.requests == []  # not one request (so not the password) went out
    with pytest.raises(SinkError) as again:
        client.udevice(IDX, SVALUE)
    assert str(again.value) == message


def test_self_signed_certificate_is_accepted_with_its_ca_file(tls_stub, certificate):
    client_for(tls_stub.url, ca_file=certificate[0]).udevice(IDX, SVALUE)
    assert tls_stub.requests[0].tls and tls_stub.requests[0].accepted


def test_verification_off_accepts_any_certificate(tls_stub, certificate, caplog, recwarn):
    with caplog.at_level(logging.WARNING):
        client = client_for(tls_stub.url, verify_tls=False, ca_file=certificate[0])
    assert "is not verified; the CA file" in caplog.text
    client.udevice(IDX, SVALUE)
    client.udevice(IDX, SVALUE)
    assert [r.accepted for r in tls_stub.requests] == [True, True]
    assert not [w for w in recwarn if "Unverified HTTPS" in str(w.message)]


def test_plain_http_client_against_https_server_fails_clearly(tls_stub):
    # The server drops the connection; whether the client sees a reset or an early close is
    # down to timing, both are clear.
    with pytest.raises(
        SinkError,
        match=rf"^cannot reach Domoticz at http://{tls_stub.server}: the connection was "
        "(reset|closed without an answer)$",
    ):
        client_for(tls_stub.server, timeout=2).udevice(IDX, SVALUE)


def test_https_client_against_plain_http_server(stub):
    with pytest.raises(SinkError) as caught:
        client_for(f"https://{stub.server}").udevice(IDX, SVALUE)
    assert str(caught.value) == (
        f"Domoticz at https://{stub.server} does not speak TLS on this port (is it plain http://?)"
    )


def test_certificate_for_another_host_name(tls_stub, certificate):
    client = client_for(f"https://localhost:{tls_stub.port}", ca_file=certificate[0])
    with pytest.raises(SinkError) as caught:
        client.udevice(IDX, SVALUE)
    message = str(caught.value)
    assert message.startswith(
        f"the TLS certificate of Domoticz at https://localhost:{tls_stub.port} is for another "
        "host name ("
    )
    assert "'localhost'" in message
    assert message.endswith("; use the host name the certificate was made for")


def test_ca_file_that_is_no_certificate(tls_stub, tmp_path):
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    with pytest.raises(SinkError) as caught:
        client_for(tls_stub.url, ca_file=str(not_a_certificate)).udevice(IDX, SVALUE)
    assert str(caught.value).startswith(
        f"cannot use the Domoticz CA file {not_a_certificate}: not a usable PEM CA certificate ("
    )


def test_missing_ca_file_is_a_sink_error(tls_stub, tmp_path):
    with pytest.raises(SinkError) as caught:
        client_for(tls_stub.url, ca_file=str(tmp_path / "gone.pem")).udevice(IDX, SVALUE)
    assert (
        str(caught.value)
        == f"cannot use the Domoticz CA file {tmp_path / 'gone.pem'}: no such file"
    )


def test_ca_file_removed_while_running_is_named(tls_stub, certificate, tmp_path):
    ca_file = tmp_path / "ca.pem"
    shutil.copy(certificate[0], ca_file)
    client = client_for(tls_stub.url, ca_file=str(ca_file))
    client.udevice(IDX, SVALUE)
    ca_file.unlink()
    client.close()  # so that the next update needs a new TLS connection
    with pytest.raises(SinkError) as caught:
        client.udevice(IDX, SVALUE)
    assert str(caught.value) == f"cannot use the Domoticz CA file {ca_file}: no such file"
    shutil.copy(certificate[0], ca_file)  # put back: works again, without a restart
    client.udevice(IDX, SVALUE)
    assert len(tls_stub.updates()) == 2


def test_ca_file_is_not_used_for_plain_http(stub, tmp_path):
    # Only https:// checks certificates: a CA file given for a plain http:// server is unused.
    client_for(stub.server, ca_file=str(tmp_path / "gone.pem")).udevice(IDX, SVALUE)
    assert stub.updates()


# --- the password never leaks -----------------------------------------------------------------


def test_password_is_never_logged_nor_in_errors(caplog, certificate):
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)  # root: ours, requests' and urllib3's loggers
    with DomoticzStub(username=USER, password=PASSWORD, devices={IDX}) as server:
        client = client_for(server.server, username=USER, password=PASSWORD, timeout=0.5)
        client.udevice(IDX, SVALUE)
        texts.append(repr(client))
        for failure in ("401", "403", "404", "500", "err", "error", "garbage", "hang"):
            server.failure = failure
            with pytest.raises(SinkError) as caught:
                client.udevice(IDX, SVALUE)
            texts.append(failure_text(caught.value))
        client.close()
    gone = client_for(server.server, username=USER, password=PASSWORD, timeout=0.5)
    with pytest.raises(SinkError) as refused:
        gone.udevice(IDX, SVALUE)  # the stub is gone: connection refused
    texts.append(failure_text(refused.value))
    with DomoticzStub(devices={IDX}, tls=certificate) as tls_server:
        tls_client = client_for(tls_server.url, username=USER, password=PASSWORD)
        with pytest.raises(SinkError) as untrusted:
            tls_client.udevice(IDX, SVALUE)
        texts.append(failure_text(untrusted.value))
    texts.append(caplog.text)
    texts.extend(str(record.args) for record in caplog.records)
    assert "GET http://127.0.0.1" in caplog.text  # the debug log did record the requests
    assert "HTTP 200 from Domoticz" in caplog.text
    assert any(record.name.startswith("urllib3") for record in caplog.records)  # theirs too
    for text in texts:
        for secret in secret_forms():
            assert secret not in text


# --- what it costs ----------------------------------------------------------------------------


def test_requests_is_loaded_only_with_domoticz():
    # requests with what it loads is about 7 MiB of RSS (docs/performance.rst): a
    # configuration without Domoticz must not pay for it.
    program = (
        "import sys\n"
        "before = set(sys.modules)  # what the interpreter loads anyway (site, .pth files)\n"
        "import iskra_me162.cli, iskra_me162.config, iskra_me162.daemon\n"
        "import iskra_me162.sinks.logonly, iskra_me162.sinks.http\n"
        "heavy = {'requests', 'urllib3', 'charset_normalizer', 'chardet', 'idna', 'certifi'}\n"
        "loaded = heavy & (set(sys.modules) - before)\n"
        "assert not loaded, sorted(loaded)\n"
        "import iskra_me162.sinks.domoticz\n"
        "assert 'requests' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
