"""A virtual IEC 62056-21 mode C meter for people without hardware, for the tests and benchmarks.

* :mod:`.model` — the meter as a sans-I/O state machine (bytes and instants in, timed
  transmissions out), with its faults;
* :mod:`.profiles` — which meter it pretends to be (ISKRA ME162, an MT174-like one, a simple
  one without tariffs); :mod:`.counters` — energy registers advancing at a set power;
* :mod:`.line` — character timing and what a UART at the wrong baud rate hears;
* :mod:`.pty_meter` — the meter behind a pseudo-terminal (tests, demo, benchmarks);
  ``iskra_me162.urlhandler.protocol_sim`` — the same meter as a pyserial ``sim://`` URL;
* ``python -m iskra_me162.simulator`` — a pty meter in the foreground (see :mod:`.__main__`).
"""

from __future__ import annotations

from iskra_me162.simulator.counters import EnergyCounters, Registers
from iskra_me162.simulator.model import (
    Faults,
    MeterConfig,
    MeterModel,
    ServedReadout,
    SessionState,
    Transmission,
)
from iskra_me162.simulator.options import parse_config, parse_faults
from iskra_me162.simulator.profiles import ME162, MT174, PROFILES, SIMPLE, Profile, profile_named
from iskra_me162.simulator.pty_meter import PtyMeter

__all__ = [
    "ME162",
    "MT174",
    "PROFILES",
    "SIMPLE",
    "EnergyCounters",
    "Faults",
    "MeterConfig",
    "MeterModel",
    "Profile",
    "PtyMeter",
    "Registers",
    "ServedReadout",
    "SessionState",
    "Transmission",
    "parse_config",
    "parse_faults",
    "profile_named",
]
