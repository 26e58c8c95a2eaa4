"""Which serial ports an IR head may be on, and what the kernel says about each (for ``--probe``).

An IR head is nearly always a USB serial adapter (``ttyUSB*`` for FTDI, CP210x, CH340 and
PL2303 chips, ``ttyACM*`` for CDC ACM ones) or a head wired to a Raspberry Pi's own UART
(``serial0``, ``ttyAMA0``). The names ``ttyUSB0`` and ``ttyUSB1`` swap when a second adapter is
plugged in; the links in ``/dev/serial/by-id/`` name the adapter itself and stay, which is why
they come first and why the config should use them.

Only the file system is read (``/dev`` and sysfs); no port is opened here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEV = Path("/dev")
SYS_CLASS_TTY = Path("/sys/class/tty")
BY_ID = "serial/by-id"  # under DEV
# In this order: the stable links first, then the devices they lead to, then the Pi's UART.
DEVICE_PATTERNS = ("ttyUSB*", "ttyACM*", "serial0", "ttyAMA0")


@dataclass(frozen=True)
class PortInfo:
    """One candidate port: ``path`` as the config should name it, ``device`` the tty it is.

    The rest is what sysfs says: the kernel ``driver``, and for USB adapters the vendor and
    product id (``usb_id``, ``"0403:6001"``), the ``manufacturer``, ``product`` and ``serial``
    strings the adapter reports; empty when the kernel has none. ``accessible``: this user may
    open it for reading and writing.
    """

    path: str
    device: str
    driver: str = ""
    usb_id: str = ""
    manufacturer: str = ""
    product: str = ""
    serial: str = ""
    accessible: bool = True

    def describe(self) -> str:
        """One line: the kernel's view of the port."""
        parts = []
        if self.path != self.device:
            parts.append(f"-> {self.device}")
        if self.driver:
            parts.append(f"driver {self.driver}")
        if self.usb_id:
            names = " ".join(name for name in (self.manufacturer, self.product) if name)
            parts.append(f"USB {self.usb_id}" + (f" {names}" if names else ""))
        if self.serial:
            parts.append(f"serial {self.serial}")
        if not self.accessible:
            parts.append("no read/write permission for this user")
        return ", ".join(parts) if parts else "no details from the kernel"


def _natural(path: Path) -> tuple[str, int]:
    """ttyUSB2 before ttyUSB10."""
    match = re.fullmatch(r"(.*?)(\d+)", path.name)
    return (match.group(1), int(match.group(2))) if match else (path.name, -1)


def candidates(dev: Path = DEV, sys_class_tty: Path = SYS_CLASS_TTY) -> list[PortInfo]:
    """Every candidate port, each device once, under its first name in the order above."""
    names = sorted((dev / BY_ID).glob("*"))
    for pattern in DEVICE_PATTERNS:
        names += sorted(dev.glob(pattern), key=_natural)
    seen: set[str] = set()
    found = []
    for name in names:
        if not name.exists():  # a dangling link: the adapter was unplugged a moment ago
            continue
        device = os.path.realpath(name)
        if device in seen:
            continue
        seen.add(device)
        found.append(describe(str(name), sys_class_tty))
    return found


def describe(path: str, sys_class_tty: Path = SYS_CLASS_TTY) -> PortInfo:
    """What sysfs says about the tty that ``path`` (a device or a link to one) is."""
    device = os.path.realpath(path)
    accessible = os.access(device, os.R_OK | os.W_OK)
    node = sys_class_tty / Path(device).name / "device"
    if not node.exists():  # a pty, or no sysfs (a container)
        return PortInfo(path, device, accessible=accessible)
    driver = node / "driver"
    usb = _usb_device(node.resolve())
    return PortInfo(
        path=path,
        device=device,
        driver=driver.resolve().name if driver.exists() else "",
        usb_id=f"{_read(usb / 'idVendor')}:{_read(usb / 'idProduct')}" if usb else "",
        manufacturer=_read(usb / "manufacturer") if usb else "",
        product=_read(usb / "product") if usb else "",
        serial=_read(usb / "serial") if usb else "",
        accessible=accessible,
    )


def by_id_link(path: str, dev: Path = DEV) -> str | None:
    """The ``/dev/serial/by-id`` link to the same device as ``path``, if there is one."""
    if path.startswith(str(dev / BY_ID) + "/"):
        return path
    device = os.path.realpath(path)
    for link in sorted((dev / BY_ID).glob("*")):
        if os.path.realpath(link) == device:
            return str(link)
    return None


def _usb_device(node: Path) -> Path | None:
    """The USB device above a tty's sysfs node: the first parent with an ``idVendor``."""
    for directory in (node, *node.parents):
        if (directory / "idVendor").is_file():
            return directory
        if directory.name == "devices":  # the top of the sysfs device tree
            break
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
