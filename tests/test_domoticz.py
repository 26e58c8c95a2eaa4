"""The Domoticz sink against a real HTTP(S) server on 127.0.0.1 (tests/httpstub.py)."""

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

import pytest

from iskra_me162.errors import SinkError
from iskra_me162.p1 import P1Values
from iskra_me162.sinks.domoticz import DomoticzSink, parse_domoticz_server
from tests.httpstub import DomoticzStub
from tests.test_p1 import make_readout

USER = "meterman"
PASSWORD = "pa55-W0rd:with;odd&chars%"  # distinctive, with characters that URLs would mangle
IDX = 42
REPO = Path(__file__).resolve().parent.parent


def with_power(monotonic: float, imported: str = "8048.375", watts: str = "908") -> object:
    """A readout that is sent at once (the meter reports power)."""
    return make_readout(
        monotonic,
        {
            "1.8.1": imported,
            "1.8.2": "10.5",
            "2.8.0": "1.25",
            "1.7.0": (watts, "W"),
            "2.7.0": ("0", "W"),
        },
    )


@pytest.fixture
def stub():
    with DomoticzStub(devices={IDX}) as server:
        yield server


@pytest.fixture
def auth_stub():
    with DomoticzStub(username=USER, password=PASSWORD, devices={IDX}) as server:
        yield server


def sink_for(server: str, **options: object) -> DomoticzSink:
    options.setdefault("timeout", 5.0)
    return DomoticzSink(server, IDX, **options)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failure_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


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
    ],
)
def test_parse_domoticz_server_rejects_garbage(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_domoticz_server(value)
    assert "host:port or an http:// or https:// URL" in str(caught.value)


def test_credentials_in_the_url_are_refused_without_repeating_them():
    with pytest.raises(ValueError) as caught:
        parse_domoticz_server(f"http://{USER}:{PASSWORD}@host:8080")
    assert "username and password settings" in str(caught.value)
    assert PASSWORD not in str(caught.value) and USER not in str(caught.value)


def test_sink_rejects_bad_device_index_and_timeout():
    with pytest.raises(ValueError, match="device index"):
        DomoticzSink("host:8080", -1)
    with pytest.raises(ValueError, match="device index"):
        DomoticzSink("host:8080", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        DomoticzSink("host:8080", 1, timeout=0)


# --- sending ----------------------------------------------------------------------------------


def test_publish_sends_the_p1_update(stub):
    sink = sink_for(stub.server)
    values = sink.publish(with_power(10))
    sink.close()
    assert values == P1Values(8048375, 10500, 1250, 0, 908, 0)
    (request,) = stub.requests
    assert request.method == "GET" and request.path == "/json.htm"
    assert request.raw_query == (
        f"type=command&param=udevice&idx={IDX}&nvalue=0&svalue=8048375;10500;1250;0;908;0"
    )
    assert request.accepted and request.svalue_well_formed
    assert "Authorization" not in request.headers
    assert stub.svalue(IDX) == "8048375;10500;1250;0;908;0"


def test_cold_start_without_power_registers_sends_nothing_then_power_from_deltas(stub):
    sink = sink_for(stub.server)
    assert sink.publish(make_readout(0, {"1.8.0": "100.000", "2.8.0": "2.000"})) is None
    assert stub.requests == []
    values = sink.publish(make_readout(60, {"1.8.0": "100.050", "2.8.0": "2.000"}))
    assert values is not None and values.svalue == "100050;0;2000;0;3000;0"
    assert [r.svalue for r in stub.updates()] == ["100050;0;2000;0;3000;0"]
    assert all(r.svalue_well_formed for r in stub.requests)
    sink.close()


def test_observed_readouts_feed_the_power_computation(stub):
    sink = sink_for(stub.server)
    sink.observe(make_readout(0, {"1.8.0": "1.000"}))
    sink.observe(make_readout(60, {"1.8.0": "1.100"}))  # 6 kW, not pushed
    assert stub.requests == []
    assert sink.publish(make_readout(120, {"1.8.0": "1.101"})).cons == 60
    sink.close()


def test_observe_never_raises_on_an_unusable_readout(stub):
    sink = sink_for(stub.server)
    sink.observe(make_readout(0, {"2.8.0": "1.000"}))
    with pytest.raises(SinkError, match="no import energy register"):
        sink.publish(make_readout(1, {"2.8.0": "1.000"}))
    assert stub.requests == []


def test_preview_sends_nothing_and_stores_nothing(stub, tmp_path):
    sink = sink_for(stub.server, state_path=str(tmp_path / "state"))
    assert sink.preview(with_power(10)) == P1Values(8048375, 10500, 1250, 0, 908, 0)
    assert stub.requests == []
    assert not (tmp_path / "state").exists()


def test_swap_tariffs(stub):
    sink = sink_for(stub.server, swap_tariffs=True)
    sink.publish(with_power(10))
    assert stub.svalue(IDX) == "10500;8048375;0;1250;908;0"


def test_state_file_carries_power_across_a_restart(stub, tmp_path):
    state = str(tmp_path / "state")
    first = sink_for(stub.server, state_path=state, boot_id="boot-a")
    assert first.publish(make_readout(0, {"1.8.0": "1.000"})) is None
    assert first.publish(make_readout(60, {"1.8.0": "1.010"})).cons == 600
    first.close()
    second = sink_for(stub.server, state_path=state, boot_id="boot-a")  # restarted daemon
    assert second.publish(make_readout(120, {"1.8.0": "1.030"})).cons == 1200
    third = sink_for(stub.server, state_path=state, boot_id="boot-b")  # after a reboot
    assert third.publish(make_readout(5, {"1.8.0": "1.040"})) is None
    assert [r.svalue for r in stub.updates()] == ["1010;0;0;0;600;0", "1030;0;0;0;1200;0"]


def test_state_is_saved_only_after_domoticz_accepted(stub, tmp_path):
    state = tmp_path / "state"
    sink = sink_for(stub.server, state_path=str(state))
    stub.failure = "err"
    with pytest.raises(SinkError):
        sink.publish(with_power(10))
    assert not state.exists()
    stub.failure = None
    sink.publish(with_power(20))
    assert state.exists()


def test_unwritable_state_file_does_not_stop_publishing(stub, tmp_path, caplog):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        sink = sink_for(stub.server, state_path=str(blocker / "state"))
        for second in (10, 20, 30):
            assert sink.publish(with_power(second, f"8048.{second:03d}")) is not None
    assert len(stub.updates()) == 3
    warnings = [
        r.getMessage() for r in caplog.records if "cannot write state file" in r.getMessage()
    ]
    assert len(warnings) == 1


def test_device_index_zero_is_left_to_domoticz(stub):
    with pytest.raises(SinkError, match=r"idx 0 .*status ERR"):
        DomoticzSink(stub.server, 0).publish(with_power(10))


def test_nothing_is_lost_when_domoticz_was_down(stub):
    sink = sink_for(stub.server)
    sink.publish(make_readout(0, {"1.8.0": "1.000"}))  # cold start: waits
    stub.failure = "500"
    for second in (60, 120, 180):
        with pytest.raises(SinkError, match="HTTP 500"):
            sink.publish(make_readout(second, {"1.8.0": f"1.{second:03d}"}))
    stub.failure = None
    values = sink.publish(make_readout(240, {"1.8.0": "1.250"}))
    # the current counter, and the power of the last interval (70 Wh in 60 s)
    assert values.svalue == "1250;0;0;0;4200;0"
    assert [r.svalue for r in stub.updates()] == ["1250;0;0;0;4200;0"]


# --- authentication ---------------------------------------------------------------------------


def test_basic_auth_is_sent_up_front(auth_stub):
    sink = sink_for(auth_stub.server, username=USER, password=PASSWORD)
    sink.publish(with_power(10))
    sink.publish(with_power(20, "8048.400"))
    requests_seen = auth_stub.requests
    assert len(requests_seen) == 2  # no 401 round trip: the stub never challenges
    assert all(r.auth_user == USER and r.authorized and r.accepted for r in requests_seen)
    assert all(PASSWORD not in r.raw_query and PASSWORD not in r.path for r in requests_seen)


def test_wrong_password_is_a_401_with_a_hint(auth_stub):
    sink = sink_for(auth_stub.server, username=USER, password="wrong")
    with pytest.raises(SinkError) as caught:
        sink.publish(with_power(10))
    message = str(caught.value)
    assert "refused the login (HTTP 401)" in message
    assert "Allow Basic-Auth authentication over plain HTTP" in message
    assert "2023.1" in message
    assert "\n" not in message


def test_non_ascii_user_and_password_are_sent_as_utf8():
    # A German user's password with umlauts: Domoticz compares UTF-8 bytes.
    with DomoticzStub(username="zähler", password="Schlüssel-Ärger", devices={IDX}) as server:
        sink = sink_for(server.server, username="zähler", password="Schlüssel-Ärger")
        assert sink.publish(with_power(10)) is not None
        assert server.requests[0].auth_user == "zähler" and server.requests[0].authorized


def test_missing_credentials_is_a_401(auth_stub):
    with pytest.raises(SinkError, match=r"wants a login \(HTTP 401\)"):
        sink_for(auth_stub.server).publish(with_power(10))


def test_fresh_install_refuses_right_basic_auth_over_plain_http():
    with DomoticzStub(
        username=USER, password=PASSWORD, devices={IDX}, basic_auth_over_http=False
    ) as server:
        sink = sink_for(server.server, username=USER, password=PASSWORD)
        with pytest.raises(SinkError, match="Allow Basic-Auth authentication over plain HTTP"):
            sink.publish(with_power(10))
        assert server.requests[0].auth_user == USER


def test_fresh_install_accepts_basic_auth_over_https(certificate):
    with DomoticzStub(
        username=USER,
        password=PASSWORD,
        devices={IDX},
        basic_auth_over_http=False,
        tls=certificate,
    ) as server:
        sink = sink_for(server.url, username=USER, password=PASSWORD, ca_file=certificate[0])
        assert sink.publish(with_power(10)) is not None
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
    sink = sink_for(stub.server)
    messages = []
    for second in (10, 20):
        with pytest.raises(SinkError) as caught:
            sink.publish(with_power(second, f"8048.{second:03d}"))
        messages.append(str(caught.value))
    assert message in messages[0]
    assert messages[0] == messages[1]  # same cause, same text: the daemon logs it once
    assert "\n" not in messages[0]
    assert all(r.svalue_well_formed for r in stub.requests)


def test_unknown_idx_is_err(stub):
    with pytest.raises(SinkError, match="not a P1 Smart Meter device"):
        DomoticzSink(stub.server, IDX + 1).publish(with_power(10))
    assert stub.requests[0].body == '{"status": "ERR"}'


def test_timeout(stub):
    stub.failure = "timeout"
    sink = sink_for(stub.server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SinkError) as caught:
        sink.publish(with_power(10))
    assert time.monotonic() - started < 20  # generous: only "it did not wait for the answer"
    assert str(caught.value) == f"Domoticz at http://{stub.server} did not answer within 0.5 s"


def test_hang(stub):
    stub.failure = "hang"
    with pytest.raises(SinkError, match=r"did not answer within 0\.5 s"):
        sink_for(stub.server, timeout=0.5).publish(with_power(10))


def test_connection_refused():
    port = closed_port()
    sink = sink_for(f"127.0.0.1:{port}")
    messages = []
    for second in (10, 20):
        with pytest.raises(SinkError) as caught:
            sink.publish(with_power(second))
        messages.append(str(caught.value))
    assert messages[0] == (
        f"cannot reach Domoticz at http://127.0.0.1:{port}: "
        "connection refused (is Domoticz running, is the port right?)"
    )
    assert messages[0] == messages[1]


def test_reverse_proxy_path_prefix():
    with DomoticzStub(devices={IDX}, prefix="/domoticz") as server:
        assert server.url.endswith("/domoticz")
        assert sink_for(server.url).publish(with_power(10)) is not None
        assert server.requests[0].path == "/domoticz/json.htm"
        with pytest.raises(SinkError, match="wrong path prefix"):
            sink_for(server.server).publish(with_power(20))


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
    sink = sink_for(tls_stub.url)
    with pytest.raises(SinkError) as caught:
        sink.publish(with_power(10))
    message = str(caught.value)
    assert message.startswith(f"the TLS certificate of Domoticz at {tls_stub.url} is not trusted")
    assert "self-signed certificate" in message
    assert "CA certificate" in message
    assert tls_stub.updates() == []
    with pytest.raises(SinkError) as again:
        sink.publish(with_power(20))
    assert str(again.value) == message


def test_self_signed_certificate_is_accepted_with_its_ca_file(tls_stub, certificate):
    sink = sink_for(tls_stub.url, ca_file=certificate[0])
    assert sink.publish(with_power(10)) is not None
    assert tls_stub.requests[0].tls and tls_stub.requests[0].accepted


def test_verification_off_accepts_any_certificate(tls_stub, caplog, recwarn):
    with caplog.at_level(logging.WARNING):
        sink = sink_for(tls_stub.url, verify_tls=False)
    assert "is not verified" in caplog.text
    assert sink.publish(with_power(10)) is not None
    assert tls_stub.requests[0].accepted
    assert not [w for w in recwarn if "Unverified HTTPS" in str(w.message)]


def test_plain_http_client_against_https_server_fails_clearly(tls_stub):
    # The server drops the connection; whether the client sees a reset or an early close is
    # down to timing, both are clear.
    with pytest.raises(
        SinkError,
        match=rf"^cannot reach Domoticz at http://{tls_stub.server}: the connection was "
        "(reset|closed without an answer)$",
    ):
        sink_for(tls_stub.server, timeout=2).publish(with_power(10))


def test_https_client_against_plain_http_server(stub):
    with pytest.raises(SinkError) as caught:
        sink_for(f"https://{stub.server}").publish(with_power(10))
    assert (
        str(caught.value)
        == f"Domoticz at https://{stub.server} does not speak TLS (is it plain http://?)"
    )


def test_certificate_for_another_host_name(tls_stub, certificate):
    sink = sink_for(f"https://localhost:{tls_stub.port}", ca_file=certificate[0])
    with pytest.raises(SinkError, match="is for another host name") as caught:
        sink.publish(with_power(10))
    assert "'localhost'" in str(caught.value)


def test_ca_file_that_is_no_certificate(tls_stub, tmp_path):
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    with pytest.raises(SinkError) as caught:
        sink_for(tls_stub.url, ca_file=str(not_a_certificate)).publish(with_power(10))
    assert str(caught.value).startswith(f"cannot use the Domoticz CA file {not_a_certificate} (")


def test_unknown_host_name():
    with pytest.raises(SinkError) as caught:
        sink_for("no-such-host.invalid:8080", timeout=2).publish(with_power(10))
    assert str(caught.value) == (
        "cannot reach Domoticz at http://no-such-host.invalid:8080: host name not found"
    )


def test_missing_ca_file_at_run_time_is_a_sink_error(tls_stub, tmp_path):
    with pytest.raises(SinkError, match=r"CA file .*gone\.pem"):
        sink_for(tls_stub.url, ca_file=str(tmp_path / "gone.pem")).publish(with_power(10))


# --- the password never leaks -----------------------------------------------------------------


def test_password_is_never_logged_nor_in_errors(caplog, certificate):
    secrets = [
        PASSWORD,
        base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        base64.b64encode(PASSWORD.encode()).decode(),
    ]
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)  # root: ours, requests' and urllib3's loggers
    with DomoticzStub(username=USER, password=PASSWORD, devices={IDX}) as server:
        sink = sink_for(server.server, username=USER, password=PASSWORD, timeout=0.5)
        sink.publish(with_power(10))
        texts.append(repr(sink))
        for failure in ("401", "403", "404", "500", "err", "error", "garbage", "hang"):
            server.failure = failure
            with pytest.raises(SinkError) as caught:
                sink.publish(with_power(10 + len(texts), f"8048.{375 + len(texts):03d}"))
            texts.append(failure_text(caught.value))
        sink.close()
    wrong = sink_for(server.server, username=USER, password=PASSWORD, timeout=0.5)
    with pytest.raises(SinkError) as refused:
        wrong.publish(with_power(100))  # the stub is gone: connection refused
    texts.append(failure_text(refused.value))
    with DomoticzStub(devices={IDX}, tls=certificate) as tls_server:
        tls_sink = sink_for(tls_server.url, username=USER, password=PASSWORD)
        with pytest.raises(SinkError) as untrusted:
            tls_sink.publish(with_power(10))
        texts.append(failure_text(untrusted.value))
    texts.append(caplog.text)
    assert "GET http://127.0.0.1" in caplog.text  # the debug log did record the requests
    assert "HTTP 200 from Domoticz" in caplog.text
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- start-up cost ----------------------------------------------------------------------------


def test_a_domoticz_run_never_loads_requests(tmp_path):
    # http.client is enough for one GET per update; requests and urllib3 would cost ~7 MiB of
    # RSS on a Pi (docs/performance.rst), so nothing may pull them in again.
    program = (
        "import sys\n"
        "from iskra_me162.sinks.domoticz import DomoticzSink\n"
        f"sink = DomoticzSink('127.0.0.1:{closed_port()}', 1, state_path={str(tmp_path / 's')!r})\n"
        "from tests.test_p1 import make_readout\n"
        "try:\n"
        "    sink.publish(make_readout(1, {'1.8.0': '1', '1.7.0': '1'}))\n"
        "except Exception as error:\n"
        "    assert 'connection refused' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('published to a closed port')\n"
        "loaded = sorted({'requests', 'urllib3', 'charset_normalizer'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
