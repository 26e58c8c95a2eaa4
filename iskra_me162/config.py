"""Parse and validate ``/etc/default/iskra-me162``. The file is data: it is never executed.

The syntax is exactly what the original 2016 script's README showed (which that script ran with
``exec()``): ``key = value`` lines, ``#`` comments and blank lines, where a value is a string in
double or single quotes, an integer, a decimal number, or ``True``/``False``. Anything else — an
expression, a call, an f-string, a second statement — is a :class:`ConfigError` that names the file
and line, and nothing in the file is run.

Every key is declared once, as a field of :class:`Config` made by the :class:`Component` it
configures (``METER.key(default, doc, limits...)``): its type is the field's annotation, its
default the field's default. :data:`KEYS` (name → :class:`KeySpec`) is read off those fields, and
the parser, ``--check-config``, the shipped example file, the man page check and the daemon's
per-sink key lists (:func:`keys_of`) all use it.
"""

from __future__ import annotations

import os
import re
import stat
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from iskra_me162.errors import ConfigError

DEFAULT_PATH = "/etc/default/iskra-me162"
DEFAULT_STATE_FILE = "/run/iskra-me162/state"
# The 2016 script's default; /var/run is root's and the service user cannot write there.
LEGACY_STATE_FILE = "/var/run/me162-state"
# serial_format's default depends on the protocol; with "auto" it is the found protocol's.
SERIAL_FORMAT_DEFAULTS = {"iec62056-21": "7E1", "sml": "8N1"}
DEFAULT_PROTOCOL = "auto"
PROTOCOLS = ("auto", *SERIAL_FORMAT_DEFAULTS)
STANDARD_BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
LOCKOUT_WARNING_INTERVAL = 60  # below this some meters refuse new sessions (they lock out)

Value = str | int | float | bool
_SPEC = "iskra_me162.key"  # the field metadata entry that makes a Config field a key


@dataclass(frozen=True)
class KeySpec:
    """One configuration key: its type, default, limits, a one-line description, its component."""

    kind: type
    default: Value | None
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    secret: bool = False
    component: str = ""  # a name of COMPONENTS


@dataclass(frozen=True)
class Component:
    """A part of the daemon with keys of its own: the meter, the loop, a stage or a sink.

    ``title`` is the heading its keys are under in etc/default/iskra-me162 and in iskra-me162(5)
    (both checked).
    """

    name: str
    title: str

    def key(
        self,
        default: Value | None,
        doc: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: tuple[str, ...] = (),
        check: Callable[[Any], str | None] | None = None,
        secret: bool = False,
    ) -> Any:  # like dataclasses.field(): the field's type is its annotation
        """A :class:`Config` field that is a key of this component (its type: the annotation)."""
        spec = {
            "doc": doc,
            "minimum": minimum,
            "maximum": maximum,
            "choices": choices,
            "check": check,
            "secret": secret,
            "component": self.name,
        }
        return field(default=default, repr=not secret, metadata={_SPEC: spec})


METER = Component("meter", "The meter")  # port.py, meters.py, sml_meter.py
DAEMON = Component("daemon", "The daemon")  # daemon.py: schedule, watchdog, logging
DERIVE = Component("derive", "The state file")  # the derive stage: values for every sink
DOMOTICZ = Component("domoticz", "Domoticz")  # sinks/domoticz.py (and logonly.py without it)
MQTT = Component("mqtt", "MQTT")  # sinks/mqtt.py
HTTP = Component("http", "HTTP endpoint")  # sinks/http.py
COMPONENTS: dict[str, Component] = {
    component.name: component for component in (METER, DAEMON, DERIVE, DOMOTICZ, MQTT, HTTP)
}


# --- checks of single values (a lazy import each: only when the file sets that key) -------------
def _check_port(value: str) -> str | None:
    """A device path is checked when it is opened (it may appear later: USB); a URL now."""
    if not value.strip():
        return "must not be empty"
    if "://" not in value:
        return None
    from iskra_me162.port import url_problem

    return url_problem(value)


def _check_serial_format(value: str) -> str | None:
    if value and not re.fullmatch(r"[5-8][NEOMS][12]", value.upper()):
        return f"serial_format must look like 7E1 or 8N1, not {value!r}"
    return None


def _check_baud_rate(value: int) -> str | None:
    if value not in STANDARD_BAUD_RATES:
        rates = ", ".join(str(rate) for rate in STANDARD_BAUD_RATES)
        return f"sml_baudrate must be one of {rates}; not {value}"
    return None


def _check_mqtt_host(value: str) -> str | None:
    if not value:
        return None
    from iskra_me162.sinks.mqtt_messages import check_host

    try:
        check_host(value)
    except ConfigError as error:
        return error.message
    return None


def _topic_prefix_check(key: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        from iskra_me162.sinks.mqtt_messages import check_topic_prefix

        try:
            check_topic_prefix(value, key)
        except ConfigError as error:
            return error.message
        return None

    return check


def _check_device_name(value: str) -> str | None:
    from iskra_me162.sinks.mqtt_messages import check_device_name

    return check_device_name(value)


def _check_listen(value: str) -> str | None:
    if not value:
        return None
    from iskra_me162.sinks.http import parse_listen

    try:
        parse_listen(value)
    except ValueError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class Config:
    """The validated configuration: one field per key, grouped by component, then ``warnings``.

    ``warnings`` are logged by the daemon once logging is up.
    """

    path: str = DEFAULT_PATH

    # --- the meter ---------------------------------------------------------------------------
    protocol: str = METER.key(
        DEFAULT_PROTOCOL,
        "iec62056-21 (mode C request and readout), sml (meters that push SML frames) or auto "
        "(try mode C first, then listen for SML frames)",
        choices=PROTOCOLS,
    )
    port: str = METER.key(
        "/dev/ttyUSB0",
        "serial device of the IR head, or a pyserial URL (rfc2217://host:port, socket://host:port)",
        check=_check_port,
    )
    device_name: str = METER.key(
        "",
        "the meter's name in Home Assistant, on the status page and in the log (\"Heat pump "
        'meter"); empty = make, model and number; never part of a topic',
        check=_check_device_name,
    )
    serial_format: str = METER.key(
        "",
        "data bits, parity, stop bits; iec62056-21: 7E1 (8N1 for adapters without 7-bit "
        "support: bytes are then masked to 7 bits); sml: 8N1 unless set; auto: the found "
        "protocol's unless set",
        check=_check_serial_format,
    )
    sml_baudrate: int = METER.key(
        9600, "baud rate of an SML meter (almost all push at 9600)", check=_check_baud_rate
    )
    use_highspeed: bool = METER.key(
        True, "switch to the baud rate the meter proposes after the identification"
    )
    baud_switch_delay: float = METER.key(
        0.1,
        "seconds between sending the ACK (drained from the output) and switching the baud rate",
        minimum=0.0,
        maximum=1.5,
    )
    live_power: bool = METER.key(
        False,
        "iec62056-21: read the counters every live_power_interval in the meter's programming "
        "mode (read-only, no password) and take the power from the timing of their 1 Wh steps",
    )
    live_power_interval: float = METER.key(
        0.5,
        "seconds between two polls of the counters with live_power (the accuracy is about this "
        "interval divided by the time between two 1 Wh steps)",
        minimum=0.2,
        maximum=10.0,
    )

    # --- the daemon's loop -------------------------------------------------------------------
    update_interval: int = DAEMON.key(
        60, "seconds between two readouts and pushes", minimum=1, maximum=86400
    )
    watchdog_failed_cycles: int = DAEMON.key(
        10,
        "consecutive failed cycles after which the systemd watchdog is no longer fed",
        minimum=1,
        maximum=100000,
    )
    print_debug: int = DAEMON.key(0, "0 = warnings, 1 = info, 2 = debug", minimum=0, maximum=2)
    stale_after: float = DAEMON.key(
        0.0,
        "seconds after which a reading is too old for every sink (the HTTP endpoint answers "
        "503, Home Assistant shows the MQTT sensors as unavailable); 0 = twice update_interval",
        minimum=0.0,
        maximum=86400 * 7,
    )

    # --- the derive stage: its state file ------------------------------------------------------
    state_file: str = DERIVE.key(
        DEFAULT_STATE_FILE,
        "recent counter readings, so that power continues after a restart (put it on tmpfs); "
        "empty = keep them in memory",
    )

    # --- Domoticz ------------------------------------------------------------------------------
    domoticzserver: str = DOMOTICZ.key(
        "", "host:port or http(s):// URL of Domoticz; empty disables Domoticz"
    )
    domoticzusername: str = DOMOTICZ.key("", "Domoticz user for Basic auth; empty = no auth")
    domoticzpassword: str = DOMOTICZ.key("", "Domoticz password", secret=True)
    device_index: int | None = DOMOTICZ.key(
        None, "Idx of the P1 Smart Meter (Electric) device", minimum=1, maximum=10**9
    )
    domoticz_ca_file: str = DOMOTICZ.key("", "CA certificate file for an https:// Domoticz")
    domoticz_verify_tls: bool = DOMOTICZ.key(True, "verify the https:// certificate of Domoticz")
    domoticz_timeout: float = DOMOTICZ.key(
        10.0, "seconds to wait for Domoticz", minimum=0.5, maximum=300
    )
    swap_tariffs: bool = DOMOTICZ.key(False, "send tariff 2 as Domoticz's T1 and tariff 1 as T2")

    # --- MQTT with Home Assistant discovery ------------------------------------------------------
    mqtt_host: str = MQTT.key(
        "",
        "host name or IP address of the MQTT broker; empty = MQTT off",
        check=_check_mqtt_host,
    )
    mqtt_port: int = MQTT.key(
        1883, "TCP port of the broker (8883 is usual for TLS)", minimum=1, maximum=65535
    )
    mqtt_username: str = MQTT.key("", "MQTT user name; empty = no login")
    mqtt_password: str = MQTT.key("", "MQTT password (needs mqtt_username)", secret=True)
    mqtt_tls: bool = MQTT.key(False, "connect with TLS (certificate and host name are checked)")
    mqtt_ca_file: str = MQTT.key(
        "", "CA certificate (PEM) of the broker's certificate; empty = the system's CAs"
    )
    mqtt_topic_prefix: str = MQTT.key(
        "iskra-me162",
        "first topic level(s) of everything published",
        check=_topic_prefix_check("mqtt_topic_prefix"),
    )
    mqtt_discovery_prefix: str = MQTT.key(
        "homeassistant",
        "Home Assistant's MQTT discovery prefix",
        check=_topic_prefix_check("mqtt_discovery_prefix"),
    )
    mqtt_retain: bool = MQTT.key(False, "keep the latest state messages on the broker (retained)")

    # --- HTTP endpoint (Home Assistant RESTful sensor) -------------------------------------------
    http_listen: str = HTTP.key(
        "", "host:port to serve the readings over HTTP on; empty = off", check=_check_listen
    )
    http_stale_after: float = HTTP.key(
        0.0,
        "the old name of stale_after, still read (stale_after wins when both are set)",
        minimum=0.0,
        maximum=86400 * 7,
    )

    warnings: tuple[str, ...] = ()
    # The command line's --state-file (the template unit passes each instance's own): it wins
    # over the file's state_file, and a reload (SIGHUP) keeps it. None: not given.
    state_file_option: str | None = None

    @property
    def reading_max_age(self) -> float:
        """The one freshness rule: the age in seconds at which a reading is too old for every
        sink (HTTP 503, MQTT expire_after). Twice the interval by default: one missed readout
        is no outage, two are."""
        return self.stale_after or self.http_stale_after or 2.0 * self.update_interval

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in any output (for log filters and tests)."""
        return tuple(
            str(getattr(self, name))
            for name, spec in KEYS.items()
            if spec.secret
            if getattr(self, name)
        )


def _kind(annotation: object) -> type:
    """A key's value type from its field's annotation; ``int | None``: a key without default."""
    kinds = [arg for arg in typing.get_args(annotation) or (annotation,) if arg is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (str, int, float, bool):
        raise TypeError(f"a key is str, int, float or bool (or one of them | None): {annotation}")
    return kinds[0]


def _declared_keys() -> dict[str, KeySpec]:
    """KEYS read off Config's fields, in their order (which --check-config prints)."""
    annotations = typing.get_type_hints(Config)
    keys: dict[str, KeySpec] = {}
    for item in fields(Config):
        if _SPEC in item.metadata:  # path and warnings are not keys of the file
            keys[item.name] = KeySpec(
                _kind(annotations[item.name]), item.default, **item.metadata[_SPEC]
            )
    return keys


KEYS: dict[str, KeySpec] = _declared_keys()


def keys_of(*components: str) -> tuple[str, ...]:
    """The keys of the named components (names of :data:`COMPONENTS`), in declaration order.

    For example what the daemon compares on a reload to decide whether to rebuild a sink:
    ``keys_of("mqtt")``; a sink that also reads another component's key adds it by name.
    """
    unknown = [name for name in components if name not in COMPONENTS]
    if unknown:
        raise KeyError(f"no such component: {', '.join(unknown)} (see config.COMPONENTS)")
    return tuple(key for key, spec in KEYS.items() if spec.component in components)


# A value: "..." or '...' (backslash escapes as in Python), an integer, a decimal, True/False.
_LINE_RE = re.compile(r"^\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")
_STRING_RE = re.compile(r"""(?P<q>["'])(?P<body>(?:\\.|(?!(?P=q))[^\\])*)(?P=q)""")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LINE_END = re.compile(r"\r\n|\n|\r")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


def _strip_comment(text: str) -> str:
    """Remove a trailing ``# comment`` that is not inside a quoted string."""
    quote = ""
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote:
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#":
            return text[:index].rstrip()
    return text


def _unescape(body: str) -> str:
    out: list[str] = []
    chars = iter(body)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(char)
    return "".join(out)


def parse_value(text: str) -> Value:
    """One literal; raises ValueError for anything that is not plain data."""
    match = _STRING_RE.fullmatch(text)
    if match:
        return _unescape(match.group("body"))
    if text in ("True", "False"):
        return text == "True"
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if text.lower() in ("true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"write True or False (with a capital letter), not {text}")
    if not text:
        raise ValueError("no value after '='")
    raise ValueError(
        "not a plain value: use \"text\", 'text', a number, True or False "
        "(the file is read as data, nothing in it is executed)"
    )


def _convert(key: str, spec: KeySpec, value: Value) -> Value:
    kind = spec.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, not {value!r}")
        value = float(value)
    elif kind is str and not isinstance(value, str):
        raise ValueError(f'{key} must be a string in quotes, e.g. {key} = "{value}"')
    if spec.minimum is not None and value < spec.minimum:  # type: ignore[operator]
        raise ValueError(f"{key} must be at least {spec.minimum:g}, not {value}")
    if spec.maximum is not None and value > spec.maximum:  # type: ignore[operator]
        raise ValueError(f"{key} must be at most {spec.maximum:g}, not {value}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{key} must be one of {', '.join(spec.choices)}; not {value!r}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ValueError(problem if problem.startswith(key) else f"{key} {problem}")
    return value


def parse_text(
    text: str, path: str = DEFAULT_PATH
) -> tuple[dict[str, Value], dict[str, int], list[str]]:
    """Parse the file's text into raw values, the line of each key, and warnings."""
    values: dict[str, Value] = {}
    lines: dict[str, int] = {}
    warnings: list[str] = []
    # Only CR, LF and CR LF end a line: str.splitlines() would also split inside a value at
    # \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029.
    for number, raw_line in enumerate(_LINE_END.split(text), start=1):
        line = _strip_comment(raw_line).strip()
        if not line:
            continue
        match = _LINE_RE.match(line)
        if match is None:
            raise ConfigError(
                "expected 'key = value' (the file is read as data, nothing in it is executed)",
                path,
                number,
            )
        key, value_text = match.group("key"), match.group("value")
        spec = KEYS.get(key)
        if spec is None:
            import difflib  # only on this error path: it costs a quarter MiB at start-up

            hint = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown key {key!r}{suggestion}", path, number)
        try:
            value = _convert(key, spec, parse_value(value_text))
        except ValueError as error:
            raise ConfigError(str(error), path, number) from None
        if key in values:
            warnings.append(f"{path}:{number}: {key} is set again (line {lines[key]}); last wins")
        values[key] = value
        lines[key] = number
    return values, lines, warnings


def load_config(path: str = DEFAULT_PATH, state_file: str | None = None) -> Config:
    """Read, parse and validate the configuration file; raise ConfigError on any problem.
    ``state_file``: the command line's --state-file, used instead of the file's."""
    try:
        with open(path, encoding="utf-8") as handle:  # noqa: PTH123 - fstat of the same handle
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read configuration file: {error}", path) from None
    config = config_from_text(text, path, state_file)
    if config.domoticzpassword and mode & stat.S_IROTH:
        config = _with_warning(
            config,
            f"{path} contains a password and is readable by every user: "
            f"run 'chmod 640 {path}' (and chown root:iskra-me162)",
        )
    return config


def config_from_text(text: str, path: str = DEFAULT_PATH, state_file: str | None = None) -> Config:
    values, lines, warnings = parse_text(text, path)
    settings: dict[str, Any] = {key: spec.default for key, spec in KEYS.items()}
    settings.update(values)
    if state_file is not None:  # --state-file: the file's state_file (if any) is not used
        settings["state_file"] = state_file

    if "http_stale_after" in values:
        warnings.append(
            f"{path}:{lines['http_stale_after']}: http_stale_after is now called stale_after "
            "and applies to every sink; please rename it"
        )
    if state_file is None and settings["state_file"] == LEGACY_STATE_FILE:
        warnings.append(
            f"{path}:{lines['state_file']}: state_file {LEGACY_STATE_FILE} is the old default, "
            f"which the service user cannot write; using {DEFAULT_STATE_FILE} instead"
        )
        settings["state_file"] = DEFAULT_STATE_FILE
    if settings["domoticzserver"]:
        if settings["device_index"] is None:
            raise ConfigError(
                "device_index is required when domoticzserver is set "
                "(the Idx of the P1 Smart Meter device in Domoticz)",
                path,
                lines["domoticzserver"],
            )
        from iskra_me162.sinks.domoticz_client import parse_domoticz_server

        try:
            parse_domoticz_server(settings["domoticzserver"])
        except ValueError as error:
            raise ConfigError(str(error), path, lines["domoticzserver"]) from None
        if settings["domoticzpassword"] and not settings["domoticzusername"]:
            raise ConfigError(
                "domoticzpassword is set but domoticzusername is empty",
                path,
                lines["domoticzpassword"],
            )
    for key in ("domoticz_ca_file", "mqtt_ca_file"):
        if settings[key]:
            problem = _file_problem(settings[key])
            if problem:
                raise ConfigError(f"{key} {settings[key]!r} {problem}", path, lines[key])
    if settings["mqtt_host"]:
        if settings["mqtt_password"] and not settings["mqtt_username"]:
            raise ConfigError(
                "mqtt_password is set but mqtt_username is empty", path, lines["mqtt_password"]
            )
        from iskra_me162.sinks.mqtt_client import import_paho

        try:
            import_paho()  # names the package to install when it is missing
        except ConfigError as error:
            raise ConfigError(error.message, path, lines["mqtt_host"]) from None
    if settings["update_interval"] < LOCKOUT_WARNING_INTERVAL and settings["protocol"] != "sml":
        warnings.append(
            f"{path}:{lines['update_interval']}: update_interval {settings['update_interval']} s "
            f"is below {LOCKOUT_WARNING_INTERVAL} s: some meters refuse a new session for up to a "
            "minute after one and will then be read less often than configured"
        )
    port = settings["port"]
    if port.startswith("socket://") and settings["use_highspeed"] and settings["protocol"] != "sml":
        warnings.append(
            f"{path}:{lines.get('port', 0)}: a socket:// port cannot change the baud rate of the "
            "remote head; use_highspeed will fail and fall back to 300 baud "
            "(set use_highspeed = False, or use rfc2217://)"
        )
    if "serial_format" not in values:  # "" for auto: the found protocol's (auto_meter.py)
        settings["serial_format"] = SERIAL_FORMAT_DEFAULTS.get(settings["protocol"], "")
    settings["serial_format"] = settings["serial_format"].upper()
    return Config(path=path, warnings=tuple(warnings), state_file_option=state_file, **settings)


def _file_problem(name: str) -> str | None:
    """Why ``name`` is not a readable regular file, or None when it is."""
    try:
        if Path(name).is_file():
            return None
    except OSError as error:  # ENAMETOOLONG, EACCES ...: is_file() raises these
        return f"cannot be checked: {error.strerror}"
    return "does not exist or is not a file"


def _with_warning(config: Config, warning: str) -> Config:
    return replace(config, warnings=(*config.warnings, warning))
