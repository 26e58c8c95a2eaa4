"""Several meters on one machine (issue 14): what an instance of the template unit
``iskra-me162@.service`` runs, end to end with the real daemon against the simulated ME162.

The unit itself (same sandbox and watchdog as the plain unit, ExecStart, RuntimeDirectory) is
checked by packaging/check-docs.py (tests/test_docs.py) and, installed, by packaging/test-deb.sh.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from iskra_me162.config import config_from_text
from tests.daemonproc import REPO, DaemonProcess, write_config
from tests.test_daemon_sml_e2e import free_port, get, wait_http

EXAMPLE = REPO / "systemd" / "iskra-me162-NAME"
TEMPLATE = REPO / "systemd" / "iskra-me162@.service"


def instance_arguments(name: str, run: Path) -> list[str]:
    """The template unit's ExecStart for instance ``name`` after ``--config PATH``, with /run
    moved to ``run``."""
    line = next(x for x in TEMPLATE.read_text().splitlines() if x.startswith("ExecStart="))
    argv = line.removeprefix("ExecStart=").replace("%i", name).split()
    assert argv[:3] == ["/usr/bin/iskra-me162", "--config", f"/etc/default/iskra-me162-{name}"]
    assert argv[3:] == ["--state-file", f"/run/iskra-me162-{name}/state"]
    return [argv[3], str(run / argv[4].removeprefix("/run/"))]


def instance_config(path: Path, http_port: int, **extra: object) -> Path:
    """The shipped example of an instance's file, with the simulated meter as its port."""
    text = EXAMPLE.read_text()
    text, ports = re.subn(r'^port = ".*"$', 'port = "sim://me162"', text, flags=re.MULTILINE)
    text, listens = re.subn(
        r'^http_listen = ".*"$', f'http_listen = "127.0.0.1:{http_port}"', text, flags=re.M
    )
    assert ports == listens == 1
    text += 'protocol = "iec62056-21"\nprint_debug = 1\n'  # skip auto's 4.5 s
    for key, value in extra.items():
        text += f'{key} = "{value}"\n' if isinstance(value, str) else f"{key} = {value}\n"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_example_is_a_valid_config_with_the_keys_that_differ_per_meter():
    config = config_from_text(EXAMPLE.read_text(), str(EXAMPLE))
    assert config.port.startswith("/dev/serial/by-id/")
    assert config.http_listen and config.http_listen != "127.0.0.1:8162"  # not the plain one's
    assert "#device_index = " in EXAMPLE.read_text()
    assert "--state-file" in EXAMPLE.read_text()


def test_state_file_option_wins_over_the_file_and_survives_a_reload(tmp_path: Path):
    """The instance's command line: its own config, its own state file in its own runtime
    directory, also when the file names another state_file (a copy of the plain one's)."""
    (tmp_path / "iskra-me162").mkdir()  # the plain unit's runtime directory
    elsewhere = tmp_path / "iskra-me162" / "state"
    args = instance_arguments("heatpump", tmp_path)
    (tmp_path / "iskra-me162-heatpump").mkdir()  # systemd's RuntimeDirectory=iskra-me162-%i
    config_path = instance_config(
        tmp_path / "heatpump.conf", free_port(), state_file=str(elsewhere), update_interval=60
    )
    state = Path(args[1])
    assert state == tmp_path / "iskra-me162-heatpump" / "state"
    daemon = DaemonProcess(config_path, *args)
    try:
        daemon.wait_for_log(r"ME162-\S+: import .* kWh")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(r"configuration reloaded from")
        status, _seconds = daemon.stop()
    finally:
        daemon.close()
    assert status == 0, daemon.output
    assert state.is_file(), daemon.output
    assert state.stat().st_size > 0
    assert not elsewhere.exists()
    assert str(elsewhere) not in daemon.output


def test_check_config_shows_the_state_file_of_the_command_line(tmp_path: Path):
    config = write_config(tmp_path / "c.conf", port="sim://me162", state_file="/run/x/state")
    daemon = DaemonProcess(config, "--check-config", "--state-file", str(tmp_path / "s"))
    try:
        daemon.process.wait(10)
    finally:
        daemon.close()
    assert daemon.process.returncode == 0
    assert f"state_file = '{tmp_path / 's'}'  (--state-file)" in daemon.output


def test_two_instances_on_one_http_port(tmp_path: Path):
    """The second says so clearly and keeps running its meter, state file and other sinks; a
    reload once the port is free starts its endpoint."""
    port = free_port()
    first = DaemonProcess(
        instance_config(tmp_path / "grid.conf", port, update_interval=5),
        "--state-file",
        str(tmp_path / "grid.state"),
    )
    second = None
    try:
        wait_http(port)
        second = DaemonProcess(
            instance_config(tmp_path / "heatpump.conf", port, update_interval=5),
            "--state-file",
            str(tmp_path / "heatpump.state"),
        )
        second.wait_for_log(
            rf"ERROR .*http: cannot listen on 127\.0\.0\.1:{port} \(http_listen\): the port is "
            r"already in use by another program; running without it until the next reload"
        )
        second.wait_for_log(r"sinks: log$")
        second.wait_for_log(r"ME162-\S+: import .* kWh", count=2, timeout=30)
        assert second.process.poll() is None
        deadline = time.monotonic() + 20
        while get(port, "/healthz")[0] != 200:  # the first one's endpoint is unharmed
            assert time.monotonic() < deadline, first.output
            time.sleep(0.2)

        assert first.stop()[0] == 0
        second.signal(signal.SIGHUP)
        second.wait_for_log(rf"HTTP endpoint on http://127\.0\.0\.1:{port}/")
        deadline = time.monotonic() + 20
        while get(port, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, second.output
            time.sleep(0.2)
        assert second.stop()[0] == 0
    finally:
        first.close()
        if second is not None:
            second.close()
    assert (tmp_path / "heatpump.state").is_file()
    assert (tmp_path / "grid.state").is_file()
