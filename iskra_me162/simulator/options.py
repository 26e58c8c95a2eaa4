"""Simulator options as text (URL query, command line, control file) -> config and faults.

One table of names serves all three, so ``sim://me162?echo=1&corrupt_every=3``, ``--echo
--corrupt-every 3`` and a control file line ``corrupt_every = 3`` mean the same thing and are
checked the same way.

The meter: ``serial``, ``power`` / ``export`` (W), ``tariff``, ``import_wh`` / ``export_wh``
(start values per tariff), ``baud_char``, ``speedup``, ``reaction`` (s), ``ack_timeout`` (s),

* ``load`` / ``export_load``: the power in steps, ``W[,W@Ts]...``: ``load=300,2000@20s,800@60s``
  is 300 W from the start, 2000 W from 20 s and 800 W from 60 s on (instead of ``power``);
* ``progmode``: what the meter does with ``ACK 0 Z 1`` (programming mode): ``on`` (answers P0
  and then R1, B0 and NAK, as a real ME162), ``ignore`` (the default: no answer, the session
  ends), ``readout`` (a data readout) or ``nak`` (NAK); 1/yes/true = ``on``, 0/no = ``ignore``;
* ``progmode_timeout``: seconds without a command before the meter drops programming mode
  and listens at 300 Bd again (default 60).

Faults (also in a control file): ``echo``, ``noise``, ``noise_byte``, ``ignore_baud``,
``corrupt_every``, ``bad_bcc_every``, ``truncate_every``, ``silent``, ``lockout``,
``high_bit`` (see :class:`~iskra_me162.simulator.model.Faults`), and for programming mode

* ``refuse_progmode``: ``nak``, ``ignore`` or ``readout`` (1/yes = ``nak``): a meter with
  programming mode refuses it while this is set;
* ``read_bad_bcc_at=N``: the Nth R1 answer since the start has a wrong BCC;
* ``silent_from=T&silent_for=S``: from T seconds after the start, for S seconds, the meter
  hears nothing and answers nothing (a hand in front of the head);
* ``error_registers=1.8.0,2.8.0``: R1 of these registers is answered ``(ERROR)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

from iskra_me162.errors import ConfigError
from iskra_me162.simulator.counters import parse_load
from iskra_me162.simulator.model import PROGMODE_ANSWERS, Faults, MeterConfig
from iskra_me162.simulator.profiles import profile_named

_TRUE = {"", "1", "true", "yes", "on"}  # "" = bare flag, e.g. sim://me162?echo
_FALSE = {"0", "false", "no", "off"}


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _int(text: str) -> int:
    return int(text.strip(), 0)  # 0x7f works for noise_byte


def _float(text: str) -> float:
    value = float(text.strip())
    if math.isnan(value):
        raise ValueError("not a number")
    return value


def _wh_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _answer(text: str, answers: tuple[str, ...], yes: str, no: str) -> str:
    lowered = text.strip().lower()
    if lowered in answers:
        return lowered
    try:
        return yes if _bool(lowered) else no
    except ValueError:
        raise ValueError(f"expected {', '.join(answers)} (or 1/0)") from None


def _progmode(text: str) -> str:
    return _answer(text, PROGMODE_ANSWERS, "on", "ignore")


def _refusal(text: str) -> str:
    return _answer(text, PROGMODE_ANSWERS[1:], "nak", "")


def _codes(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# name -> (which dataclass, field, parser)
_CONFIG_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "serial": ("serial", str.strip),
    "power": ("import_w", _int),
    "export": ("export_w", _int),
    "tariff": ("tariff", _int),
    "import_wh": ("import_wh", _wh_list),
    "export_wh": ("export_wh", _wh_list),
    "baud_char": ("baud_char", str.strip),
    "speedup": ("speedup", _float),
    "reaction": ("reaction_time", _float),
    "ack_timeout": ("ack_timeout", _float),
    "load": ("load", parse_load),
    "export_load": ("export_load", parse_load),
    "progmode": ("progmode", _progmode),
    "progmode_timeout": ("progmode_timeout", _float),
}
_FAULT_OPTIONS: dict[str, Callable[[str], object]] = {
    "echo": _bool,
    "noise": _int,
    "noise_byte": _int,
    "ignore_baud": _bool,
    "corrupt_every": _int,
    "bad_bcc_every": _int,
    "truncate_every": _int,
    "silent": _bool,
    "lockout": _float,
    "high_bit": _bool,
    "refuse_progmode": _refusal,
    "read_bad_bcc_at": _int,
    "silent_from": _float,
    "silent_for": _float,
    "error_registers": _codes,
}
# What a running meter can change (a control file, PtyMeter.set_faults / set_power / set_tariff).
RUNTIME_OPTIONS = frozenset({*_FAULT_OPTIONS, "power", "export", "tariff"})
OPTION_NAMES = frozenset({"profile", *_CONFIG_OPTIONS, *_FAULT_OPTIONS})


def _parse(name: str, parser: Callable[[str], object], text: str) -> object:
    try:
        return parser(text)
    except ValueError as error:
        raise ConfigError(f"simulator option {name}={text!r}: {error}") from None


def parse_faults(options: Mapping[str, str], base: Faults | None = None) -> Faults:
    """``base`` (default: no faults) with the fault options in ``options`` applied."""
    changes = {}
    for name, text in options.items():
        if name not in _FAULT_OPTIONS:
            raise ConfigError(f"unknown simulator fault option {name!r}")
        changes[name] = _parse(name, _FAULT_OPTIONS[name], text)
    return dataclasses.replace(base or Faults(), **changes)


def parse_config(options: Mapping[str, str], profile: str = "me162") -> MeterConfig:
    """A :class:`MeterConfig` from text options; ``options['profile']`` wins over ``profile``."""
    config_changes: dict[str, object] = {}
    fault_texts: dict[str, str] = {}
    for name, text in options.items():
        if name == "profile":
            profile = text
        elif name in _CONFIG_OPTIONS:
            field, parser = _CONFIG_OPTIONS[name]
            config_changes[field] = _parse(name, parser, text)
        elif name in _FAULT_OPTIONS:
            fault_texts[name] = text
        else:
            known = ", ".join(sorted(OPTION_NAMES))
            raise ConfigError(f"unknown simulator option {name!r} (known: {known})")
    for constant, steps in (("power", "load"), ("export", "export_load")):
        if constant in options and steps in options:
            raise ConfigError(f"simulator options {constant} and {steps}: give one of them")
    return MeterConfig(
        profile=profile_named(profile), faults=parse_faults(fault_texts), **config_changes
    )  # type: ignore[arg-type]  # values were converted by the table's parsers


def parse_control_text(
    text: str, path: str = "<control>", allowed: frozenset[str] = RUNTIME_OPTIONS
) -> dict[str, str]:
    """``name = value`` lines (``#`` comments, blank lines allowed) of a control file.

    ``allowed`` names the options a running meter can change (the SML push meter has its own).
    """
    options: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            value = ""  # a bare flag name means "on"
        if name not in allowed:
            allowed_list = ", ".join(sorted(allowed))
            raise ConfigError(
                f"unknown option {name!r} (allowed at run time: {allowed_list})",
                path=path,
                line=number,
            )
        options[name] = value.strip()
    return options


def split_runtime(options: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Separate fault options from power/tariff options."""
    faults: dict[str, str] = {}
    other: dict[str, str] = {}
    for name, value in options:
        (faults if name in _FAULT_OPTIONS else other)[name] = value
    return faults, other


def parse_runtime_value(name: str, text: str) -> int:
    """Parse ``power``, ``export`` or ``tariff`` as given in a control file."""
    return _parse(name, _int, text)  # type: ignore[return-value]
