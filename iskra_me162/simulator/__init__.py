"""A virtual IEC 62056-21 mode C meter for people without hardware, for the tests and benchmarks.

* :mod:`.model` — the meter as a sans-I/O state machine (bytes and instants in, timed
  transmissions out), with its faults, programming mode (R1, B0) and its log of what the
  reader sent;
* :mod:`.profiles` — which meter it pretends to be (ISKRA ME162, an MT174-like one, a simple
  one without tariffs); :mod:`.counters` — energy registers advancing at a set power, or at
  a power that changes in steps (a load profile);
* :mod:`.line` — character timing and what a UART at the wrong baud rate hears;
* :mod:`.pty_meter` — the meter behind a pseudo-terminal (tests, demo, benchmarks);
  ``iskra_me162.urlhandler.protocol_sim`` — the same meter as a pyserial ``sim://`` URL;
* ``python -m iskra_me162.simulator`` — a pty meter in the foreground (see :mod:`.__main__`).
"""

from __future__ import annotations

from iskra_me162.simulator.counters import EnergyCounters, LoadStep, Registers, parse_load
from iskra_me162.simulator.model import (
    ALLOWED_KINDS,
    PROGMODE_ANSWERS,
    Faults,
    MeterConfig,
    MeterModel,
    ReceivedCommand,
    ServedRead,
    ServedReadout,
    SessionState,
    Transmission,
)
from iskra_me162.simulator.options import parse_config, parse_faults
from iskra_me162.simulator.profiles import ME162, MT174, PROFILES, SIMPLE, Profile, profile_named
from iskra_me162.simulator.pty_meter import PtyMeter

__all__ = [
    "ALLOWED_KINDS",
    "ME162",
    "MT174",
    "PROFILES",
    "PROGMODE_ANSWERS",
    "SIMPLE",
    "EnergyCounters",
    "Faults",
    "LoadStep",
    "MeterConfig",
    "MeterModel",
    "Profile",
    "PtyMeter",
    "ReceivedCommand",
    "Registers",
    "ServedRead",
    "ServedReadout",
    "SessionState",
    "Transmission",
    "parse_config",
    "parse_faults",
    "parse_load",
    "profile_named",
]
