"""``iskra-me162 --probe``: the real program against simulated meters on byte-timed ptys.

Each meter case checks protocol, identity, speed and the config lines the probe prints; each
error case its message and exit status. Everything must end within 30 s (issue 13).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from iskra_me162 import cli
from iskra_me162.serial_ports import by_id_link, candidates
from iskra_me162.simulator.model import Faults, MeterConfig
from iskra_me162.simulator.profiles import MT174
from iskra_me162.simulator.pty_meter import PtyMeter
from iskra_me162.simulator.sml_push import SmlPtyMeter, SmlPushConfig

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 30.0
NOBODY = 65534


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str
    seconds: float

    @property
    def config(self) -> dict[str, str]:
        """The ``key = value`` lines under the report's "Config lines" heading."""
        _, _, tail = self.out.partition("Config lines for /etc/default/iskra-me162:\n")
        return dict(re.findall(r"^    (\w+) = (.+)$", tail, re.MULTILINE))

    def register(self, code: str) -> tuple[Decimal, str]:
        match = re.search(rf"^{re.escape(code)}\s+(\S+)\s*(\S*)$", self.out, re.MULTILINE)
        assert match, f"no register {code} in:\n{self.out}"
        return Decimal(match.group(1)), match.group(2)


def run_probe(*args: str, prefix: tuple[str, ...] = ()) -> Result:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "iskra_me162", "--probe", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S + 15,
        env=env,
        cwd="/",  # readable by the unprivileged user too
        stdin=subprocess.DEVNULL,
    )
    result = Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    assert result.seconds < LIMIT_S, f"the probe took {result.seconds:.1f} s:\n{result.out}"
    return result


def assert_only_reads(meter: PtyMeter) -> None:
    kinds = {command.kind for command in meter.commands}
    assert meter.violations == 0, kinds
    assert kinds <= {"request", "ack", "read", "break"}, kinds


# --- meters ---------------------------------------------------------------------------------------
def test_me162_mode_c_at_9600_with_programming_mode(tmp_path: Path) -> None:
    config = MeterConfig(progmode="on")
    with PtyMeter(link=tmp_path / "ttyIR", config=config) as meter:
        result = run_probe(str(tmp_path / "ttyIR"))
        served = meter.readouts[-1]
        assert_only_reads(meter)
        assert "break" in {command.kind for command in meter.commands}  # B0 ended the session
    assert result.status == 0, result.err
    assert "protocol: IEC 62056-21 mode C" in result.out
    assert "meter: ISK ME162-0033, serial 61234567" in result.out
    assert "speed: 9600 Bd" in result.out
    assert result.register("1.8.0") == (Decimal(served.value("1.8.0").split("*")[0]), "kWh")
    assert result.register("2.8.2") == (Decimal(served.value("2.8.2").split("*")[0]), "kWh")
    assert "power registers: none" in result.out
    assert "programming mode: offered" in result.out
    assert re.search(r"link: (\d+) readouts tried, \1 clean, 0 BCC errors", result.out)
    assert result.config == {
        "protocol": '"iec62056-21"',
        "port": f'"{tmp_path / "ttyIR"}"',
        "use_highspeed": "True",
        "live_power": "True",
    }


def test_mt174_fast_reaction_and_power_registers(tmp_path: Path) -> None:
    config = MeterConfig(profile=MT174, progmode="on")
    assert config.reaction == pytest.approx(0.02)  # "ISk": 20 ms
    with PtyMeter(config=config) as meter:
        port = meter.port
        result = run_probe(port)
        assert_only_reads(meter)
    assert result.status == 0, result.err
    assert "meter: ISk MT174-0001, serial 61234567" in result.out
    assert result.register("1-0:1.7.0*255") == (Decimal("0.500"), "kW")
    assert "power registers: 1.7.0, 2.7.0" in result.out
    assert "live_power is not needed" in result.out
    # Programming mode is there, but with power registers live_power is not what to use.
    assert result.config == {
        "protocol": '"iec62056-21"',
        "port": f'"{port}"',
        "use_highspeed": "True",
    }


def test_stubborn_meter_proposes_9600_and_stays_at_300(tmp_path: Path) -> None:
    config = MeterConfig(faults=Faults(ignore_baud=True))
    with PtyMeter(config=config) as meter:
        port = meter.port
        result = run_probe(port)
        assert_only_reads(meter)
        assert meter.readouts[-1].baud == 300
    assert result.status == 0, result.err
    assert "meter: ISK ME162-0033" in result.out
    assert "the meter proposes 9600 Bd, but the readout at 9600 Bd failed" in result.out
    assert re.search(r"link: (\d+) readouts tried, (\d+) clean", result.out)
    assert result.config == {
        "protocol": '"iec62056-21"',
        "port": f'"{port}"',
        "use_highspeed": "False",
    }


def test_sml_push_meter(tmp_path: Path) -> None:
    with SmlPtyMeter(config=SmlPushConfig(interval=1.0, import_w=730)) as meter:
        port = meter.port
        result = run_probe(port)
    assert result.status == 0, result.err
    assert "protocol: SML push meter, 9600 Bd 8N1" in result.out
    assert "meter number: 1ISK0070347617" in result.out
    assert result.register("1-0:16.7.0*255") == (Decimal(730), "W")
    assert "power registers: 16.7.0" in result.out
    frames = re.search(r"link: (\d+) frames good, (\d+) bad", result.out)
    assert frames and int(frames.group(1)) >= 3 and frames.group(2) == "0", result.out
    assert result.config == {
        "protocol": '"sml"',
        "port": f'"{port}"',
        "sml_baudrate": "9600",
    }


# --- what goes wrong ------------------------------------------------------------------------------
def test_no_such_device_and_the_config_file_is_not_read(tmp_path: Path) -> None:
    result = run_probe(str(tmp_path / "ttyUSB7"), "--config", str(tmp_path / "missing.conf"))
    assert result.status == cli.EX_NO_DEVICE  # not 78: --probe is for before there is one
    assert "no such device" in result.err
    dangling = tmp_path / "usb-head"
    dangling.symlink_to(tmp_path / "gone")
    result = run_probe(str(dangling))
    assert result.status == cli.EX_NO_DEVICE
    assert "unplugged" in result.err


def _unprivileged() -> tuple[str, ...]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the probe as another (unprivileged) user")
    if shutil.which("setpriv"):
        return ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    if shutil.which("runuser"):
        return ("runuser", "-u", "nobody", "--")
    pytest.skip("neither setpriv nor runuser to run the probe as an unprivileged user")


def test_permission_denied_hints_at_group_dialout() -> None:
    prefix = _unprivileged()
    with PtyMeter() as meter:  # the pty is root's, mode 0620: not for nobody
        result = run_probe(meter.port, prefix=prefix)
    assert result.status == cli.EX_NO_PERMISSION, result.err
    assert "permission denied" in result.err
    assert "dialout" in result.err and "log" in result.err


def test_port_busy_when_held_exclusively_as_the_daemon_does() -> None:
    import serial

    with PtyMeter() as meter:
        held = serial.serial_for_url(meter.port, do_not_open=True)
        held.exclusive = True  # what Port does for a device
        held.open()
        try:
            result = run_probe(meter.port)
        finally:
            held.close()
    assert result.status == cli.EX_PORT_BUSY, result.err
    assert "busy" in result.err
    assert "sudo systemctl stop iskra-me162" in result.err


@contextmanager
def bare_pty(garbage: bool) -> Iterator[str]:
    """A pty nobody answers on (``garbage``: that sends random bytes all the time)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    stop = threading.Event()
    noise = random.Random(13)

    def serve() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                os.read(master, 4096)  # what the probe sends goes nowhere
            if garbage:
                with contextlib.suppress(OSError):
                    os.write(master, noise.randbytes(48))  # ~960 bytes a second

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        os.close(master)


def test_nothing_received_hints_at_the_heads_alignment() -> None:
    with bare_pty(garbage=False) as path:
        result = run_probe(path)
    assert result.status == cli.EX_NOTHING_RECEIVED, result.err
    assert "nothing arrived" in result.err
    assert "optical port" in result.err and "cable" in result.err


def test_garbage_only_says_wrong_speed_or_head_type() -> None:
    with bare_pty(garbage=True) as path:
        result = run_probe(path)
    assert result.status == cli.EX_GARBAGE, result.err
    assert "bytes arrived" in result.err
    assert "wrong speed" in result.err and "head type" in result.err


# --- the list of ports ----------------------------------------------------------------------------
def test_without_a_port_it_lists_candidates_or_says_there_are_none() -> None:
    result = run_probe()
    if result.status == 0:
        assert "Candidate ports" in result.out and "iskra-me162 --probe /dev/" in result.out
    else:
        assert result.status == cli.EX_NO_DEVICE
        assert "no serial port found" in result.err


def _fake_tty(sys_root: Path, dev: Path, name: str, usb: dict[str, str], driver: str) -> None:
    """/dev/<name> and the sysfs tree a USB serial adapter makes for it."""
    (dev / name).touch()
    usb_dir = sys_root / "devices" / "pci0000:00" / "usb1" / f"1-{len(usb)}"
    interface = usb_dir / f"{usb_dir.name}:1.0"
    node = interface / name
    node.mkdir(parents=True)
    for attribute, value in usb.items():
        (usb_dir / attribute).write_text(value + "\n")
    drivers = sys_root / "bus" / "drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    (node / "driver").symlink_to(drivers)
    tty_class = sys_root / "class" / "tty" / name
    tty_class.mkdir(parents=True)
    (tty_class / "device").symlink_to(node)


def test_candidates_come_by_id_first_with_what_sysfs_says(tmp_path: Path) -> None:
    dev, sys_root = tmp_path / "dev", tmp_path / "sys"
    (dev / "serial" / "by-id").mkdir(parents=True)
    ftdi = {
        "idVendor": "0403",
        "idProduct": "6001",
        "manufacturer": "FTDI",
        "product": "FT232R USB UART",
        "serial": "A10K5Z",
    }
    _fake_tty(sys_root, dev, "ttyUSB0", ftdi, "ftdi_sio")
    _fake_tty(sys_root, dev, "ttyACM0", {"idVendor": "2341", "idProduct": "0043"}, "cdc_acm")
    link = dev / "serial" / "by-id" / "usb-FTDI_FT232R_USB_UART_A10K5Z-if00-port0"
    link.symlink_to(dev / "ttyUSB0")
    (dev / "serial" / "by-id" / "usb-gone-if00").symlink_to(dev / "ttyUSB9")  # unplugged

    found = candidates(dev, sys_root / "class" / "tty")

    assert [info.path for info in found] == [str(link), str(dev / "ttyACM0")]
    first = found[0]
    assert first.device == str(dev / "ttyUSB0")
    assert first.describe() == (
        f"-> {dev / 'ttyUSB0'}, driver ftdi_sio, USB 0403:6001 FTDI FT232R USB UART, serial A10K5Z"
    )
    assert found[1].describe() == "driver cdc_acm, USB 2341:0043"
    assert by_id_link(str(dev / "ttyUSB0"), dev) == str(link)
    assert by_id_link(str(dev / "ttyACM0"), dev) is None
