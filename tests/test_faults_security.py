"""Security checks against the real daemon (issue #5, "Security").

* The Domoticz password never appears in any output at ``print_debug = 2``: the daemon's log
  (with Domoticz accepting, refusing the login and answering garbage, and a reload), the
  systemd STATUS= lines, the HTTP endpoint's answers, the state file, and the output of
  ``--once``, ``--once --dry-run`` and ``--check-config``; neither as typed, nor URL-encoded,
  nor inside a Basic auth header.
* HTTPS to Domoticz verifies the certificate by default: a self-signed one is refused and
  nothing is sent; with that certificate as ``domoticz_ca_file`` (after a SIGHUP) it works.
* The HTTP endpoint listens only on the address it is given (there is no default address), and
  an address without a host is refused rather than taken to mean every interface.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from tests.daemonproc import REPO, DaemonProcess, NotifySocket, write_config
from tests.httpstub import DomoticzStub

# Characters that survive the config syntax but change in URLs, JSON and base64.
PASSWORD = "s3cr#t &%?=;+/Ärger-ZQXJ"
USER = "meter"
IDX = 7
INTERVAL = 2


def secret_forms(password: str = PASSWORD, user: str = USER) -> dict[str, str]:
    """Every form in which the password could leak."""
    forms = {
        "as typed": password,
        "url-encoded": quote(password, safe=""),
        "form-encoded": quote_plus(password),
        "basic auth": base64.b64encode(f"{user}:{password}".encode()).decode(),
        "base64": base64.b64encode(password.encode()).decode(),
        "json-escaped": json.dumps(password)[1:-1],
        "distinctive part": "ZQXJ",  # catches any other transformation that keeps the tail
    }
    return forms


def assert_no_secret(where: str, text: str) -> None:
    for name, form in secret_forms().items():
        assert form not in text, f"the password ({name}) appears in {where}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> str:
    """Status line, headers and body of one request, as text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, headers={"X-Probe": "<b>REFLECTED</b>"})
        response = connection.getresponse()
        headers = "".join(f"{name}: {value}\n" for name, value in response.getheaders())
        return f"{response.status} {response.reason}\n{headers}\n{response.read().decode()}"
    finally:
        connection.close()


@pytest.fixture
def meter(tmp_path):
    with PtyMeter(link=str(tmp_path / "ttyIR"), config=MeterConfig(import_w=900, speedup=4.0)) as m:
        yield m


def test_the_password_appears_in_no_output_at_debug_level_2(tmp_path, meter):
    stub = DomoticzStub(username=USER, password=PASSWORD, devices=(IDX,)).start()
    http_port = free_port()
    settings = {
        "port": str(meter.link),
        "update_interval": 1,
        "print_debug": 2,
        "state_file": str(tmp_path / "state.json"),
        "domoticzserver": stub.server,
        "domoticzusername": USER,
        "domoticzpassword": PASSWORD,
        "device_index": IDX,
        "domoticz_timeout": 1.0,
        "http_listen": f"127.0.0.1:{http_port}",
    }
    config = write_config(tmp_path / "iskra-me162.conf", **settings)
    notify = NotifySocket(tmp_path / "notify")
    # Read the notifications as systemd does, all the time (see test_faults.py for a systemd
    # that does not).
    stop_listening = threading.Event()

    def listen() -> None:
        while not stop_listening.is_set():
            notify.collect(time.monotonic() + 0.2)

    listening = threading.Thread(target=listen, daemon=True)
    listening.start()
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify.path)})
    answers = []
    try:
        stub.wait_for_updates(2, timeout=40)
        for failure, message in (
            ("401", "refused the login"),
            ("garbage", "without a JSON object"),
            ("timeout", "did not answer within"),
        ):
            stub.failure = failure
            daemon.wait_for_log(rf"domoticz \(still\): .*{message}", timeout=30)
        stub.failure = None
        daemon.wait_for_log(r"domoticz: working again", timeout=30)
        daemon.signal(signal.SIGHUP)  # a reload logs the configuration's warnings again
        daemon.wait_for_log(r"configuration reloaded", timeout=30)
        for path in (
            "/api/v1/readings",
            "/api/electricity/cumulated",
            "/healthz",
            "/../../etc/iskra-me162",
            "/api/v1/readings?<script>REFLECTED</script>",
        ):
            answers.append(http_get(http_port, path))
        answers.append(http_get(http_port, "/api/v1/readings", method="POST"))
    finally:
        status, _ = daemon.stop()
        daemon.close()
        stub.stop()
    time.sleep(0.3)
    stop_listening.set()
    listening.join()
    notifications = "\n".join(notify.messages)
    notify.close()
    assert status == 0, daemon.output
    assert "DEBUG" in daemon.output and "Authorization" not in daemon.output
    assert any(answer.startswith("200 ") for answer in answers), answers
    assert stub.updates(IDX)[0].auth_user == USER  # the password was sent, to Domoticz only
    assert_no_secret("the daemon's log", daemon.output)
    assert "STATUS=ME162" in notifications and "READY=1" in notifications
    assert_no_secret("the systemd notifications", notifications)
    assert_no_secret("the HTTP endpoint's answers", "\n".join(answers))
    assert "REFLECTED" not in "\n".join(answers)  # request data is never echoed
    assert_no_secret("the state file", (tmp_path / "state.json").read_text())

    # The one-shot commands, against a Domoticz that accepts and one that refuses the login.
    outputs = {}
    with DomoticzStub(username=USER, password=PASSWORD, devices=(IDX,)) as once_stub:
        once_config = write_config(
            tmp_path / "once.conf", **{**settings, "domoticzserver": once_stub.server}
        )
        for name, args in {
            "--check-config": ("--check-config",),
            "--once --dry-run": ("--once", "--dry-run"),
            "--once": ("--once",),
        }.items():
            outputs[name] = run_cli(once_config, *args)
        once_stub.failure = "401"
        outputs["--once refused"] = run_cli(once_config, "--once")
    assert len(once_stub.updates(IDX)) == 1, outputs
    assert "refused the login" in outputs["--once refused"]
    for name, output in outputs.items():
        assert_no_secret(f"the output of {name}", output)


def run_cli(config: Path, *args: str) -> str:
    environment = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "iskra_me162", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env=environment, check=False,
    )  # fmt: skip
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# --- HTTPS to Domoticz ------------------------------------------------------------------------


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


def test_https_refuses_a_self_signed_certificate_until_its_ca_file_is_configured(
    tmp_path, meter, certificate
):
    settings: dict[str, object] = {
        "port": str(meter.link),
        "update_interval": INTERVAL,
        "print_debug": 2,
        "state_file": str(tmp_path / "state.json"),
        "device_index": IDX,
        "domoticzusername": USER,
        "domoticzpassword": PASSWORD,
    }
    with DomoticzStub(username=USER, password=PASSWORD, devices=(IDX,), tls=certificate) as stub:
        settings["domoticzserver"] = stub.url  # https://127.0.0.1:port
        config = write_config(tmp_path / "iskra-me162.conf", **settings)
        daemon = DaemonProcess(config)
        try:
            daemon.wait_for_log(r"domoticz: the TLS certificate of .* is not trusted", timeout=40)
            daemon.wait_for_log(r"domoticz \(still\): the TLS certificate", timeout=20)
            refused_handshakes = stub.tls_failures
            assert stub.requests == []  # not one request (and so no password) went out
            write_config(config, **settings, domoticz_ca_file=certificate[0])
            daemon.signal(signal.SIGHUP)
            stub.wait_for_updates(1, timeout=30)
            # Logged once the push returned, a moment after the stand-in took it.
            daemon.wait_for_log(r"domoticz: working again", timeout=10)
        finally:
            status, _ = daemon.stop()
            daemon.close()
    assert status == 0, daemon.output
    assert refused_handshakes >= 1
    assert stub.updates(IDX)[0].tls and stub.updates(IDX)[0].auth_user == USER
    assert "domoticz: working again" in daemon.output
    assert_no_secret("the daemon's log", daemon.output)


# --- where the HTTP endpoint listens ------------------------------------------------------------


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses on which process ``pid`` listens on TCP ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, _, hex_port = local.partition(":")
            if state == "0A" and inode in inodes and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_http_endpoint_listens_only_on_the_configured_address(tmp_path, meter):
    port = free_port()
    config = write_config(
        tmp_path / "iskra-me162.conf",
        port=str(meter.link), update_interval=INTERVAL, state_file="",
        http_listen=f"127.0.0.1:{port}", print_debug=1,
    )  # fmt: skip
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for_log(r"HTTP endpoint on http://127.0.0.1:", timeout=30)
        addresses = listening_addresses(daemon.process.pid, port)
    finally:
        status, _ = daemon.stop()
        daemon.close()
    assert status == 0, daemon.output
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1 only, not 0.0.0.0 or ::


@pytest.mark.parametrize("listen", ["8080", ":8080", "*:8080"])
def test_an_address_without_a_host_is_refused_not_taken_as_every_interface(tmp_path, listen):
    config = write_config(tmp_path / "iskra-me162.conf", port="sim://me162", http_listen=listen)
    output = run_cli(config, "--check-config")
    assert output.startswith("exit 78"), output
    assert re.search(r"iskra-me162\.conf:2: .*http_listen|http_listen.*", output), output
    assert "iskra-me162.conf:2:" in output, output
