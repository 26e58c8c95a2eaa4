"""protocol = "auto": an SML push meter and a mode C meter, each on a byte-timed pty, found and
read by the real program (``iskra-me162 --once``) with no protocol named but "auto"."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter
from iskra_me162.simulator.sml_push import SmlPtyMeter, SmlPushConfig

REPO = Path(__file__).resolve().parents[1]
Done = subprocess.CompletedProcess[str]


def read_once(tmp_path: Path, port: str, *lines: str) -> tuple[Done, float]:
    """``--once --dry-run`` with a config of ``port``, no state file and ``lines``; how long."""
    config = tmp_path / "iskra-me162"
    config.write_text("\n".join((f'port = "{port}"', 'state_file = ""', *lines)) + "\n")
    started = time.monotonic()
    done = run_once(config)
    return done, time.monotonic() - started


def run_once(config: Path) -> Done:
    """The real program, ``--once --dry-run`` with ``config``."""
    return subprocess.run(
        [sys.executable, "-m", "iskra_me162", "--config", str(config), "--once", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_auto_finds_a_mode_c_meter_at_once_costing_no_time(tmp_path):
    """Mode C is tried first: "auto" reads an ME162 as fast as the protocol named (a --once of
    the default config is held to 1.25 x the meter's session, issue 11)."""
    link = tmp_path / "ttyIR"
    with PtyMeter(link=str(link), config=MeterConfig(import_w=450)) as meter:
        named, named_took = read_once(tmp_path, str(link), 'protocol = "iec62056-21"')
        done, took = read_once(tmp_path, str(link), 'protocol = "auto"', "print_debug = 1")
    assert named.returncode == 0 and done.returncode == 0, done.stderr
    assert "listening for SML" not in done.stderr  # it answered the first request
    assert 'answers in mode C (protocol = "iec62056-21")' in done.stderr
    assert "1.8.0" in done.stdout
    assert meter.commands and not meter.violations
    assert took < named_took + 1.0, (took, named_took)


def test_auto_finds_an_sml_push_meter_and_reads_its_frame(tmp_path):
    link = tmp_path / "ttyIR"
    with SmlPtyMeter(link=str(link), config=SmlPushConfig(interval=1.0)):
        done, took = read_once(tmp_path, str(link), 'protocol = "auto"', "print_debug = 1")
    assert done.returncode == 0, done.stderr
    assert 'pushes SML frames at 9600 Bd (protocol = "sml")' in done.stderr
    assert "1.8.0" in done.stdout and "kWh" in done.stdout
    assert took < 15


def test_the_daemon_with_auto_reads_a_push_meter_frame_by_frame(tmp_path):
    """Found to push, the meter is read as a push meter: the HTTP endpoint follows its frames
    (one a second), not one readout per update_interval."""
    from tests.daemonproc import DaemonProcess, write_config
    from tests.test_daemon_sml_e2e import free_port, get, wait_http

    link = tmp_path / "ttyIR"
    port = free_port()
    with SmlPtyMeter(link=str(link), config=SmlPushConfig(interval=1.0)) as meter:
        daemon = DaemonProcess(
            write_config(
                tmp_path / "auto.conf",
                protocol="auto",
                port=str(link),
                http_listen=f"127.0.0.1:{port}",
                update_interval=60,
                state_file="",
                print_debug=1,
            )
        )
        try:
            wait_http(port)
            daemon.wait_for_log("pushes SML frames", timeout=15)
            seen = set()
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                status, body = get(port, "/api/v1/readings")
                if status == 200:
                    seen.add(body["time"])
                time.sleep(0.3)
            assert len(seen) >= 4, seen  # a new frame about every second
            assert len(meter.frames) >= 8
        finally:
            status_code, _ = daemon.stop()
            daemon.close()
    assert status_code == 0, daemon.output


def shipped_config(tmp_path: Path, port: str) -> Path:
    """The package's /etc/default/iskra-me162 with only the port (and the state file, and the
    HTTP port that may be taken on this machine) changed."""
    text = (REPO / "etc" / "default" / "iskra-me162").read_text()
    assert '\nprotocol = "auto"\n' in text, "the shipped file names another protocol"
    text = re.sub(r'(?m)^port = ".*"$', f'port = "{port}"', text)
    text = re.sub(r'(?m)^state_file = ".*"$', 'state_file = ""', text)
    text = re.sub(r'(?m)^http_listen = ".*"$', 'http_listen = ""', text)
    path = tmp_path / "iskra-me162"
    path.write_text(text)
    return path


def test_the_shipped_config_reads_an_me162_and_an_sml_meter(tmp_path):
    link = tmp_path / "ttyIR"
    with PtyMeter(link=str(link), config=MeterConfig(import_w=450)):
        mode_c = run_once(shipped_config(tmp_path, str(link)))
    assert mode_c.returncode == 0, mode_c.stderr
    assert "ME162" in mode_c.stdout and "1.8.0" in mode_c.stdout
    with SmlPtyMeter(link=str(link), config=SmlPushConfig(interval=1.0)):
        sml = run_once(shipped_config(tmp_path, str(link)))
    assert sml.returncode == 0, sml.stderr
    assert "1.8.0" in sml.stdout and "ME162" not in sml.stdout


def test_a_2016_file_without_a_protocol_line_reads_the_me162_first_time(tmp_path):
    """The 2016 script's README example (no protocol line: now "auto"), port changed."""
    from tests.test_config import ORIGINAL_EXAMPLE

    link = tmp_path / "ttyIR"
    text = ORIGINAL_EXAMPLE.replace('"/dev/ttyUSB0"', f'"{link}"').replace(
        '"/var/run/me162-state"', '""'
    )
    assert "protocol" not in text
    config = tmp_path / "legacy"
    config.write_text(text)
    with PtyMeter(link=str(link), config=MeterConfig(import_w=450)):
        done = run_once(config)
    assert done.returncode == 0, done.stderr
    assert "ME162" in done.stdout and "1.8.0" in done.stdout
