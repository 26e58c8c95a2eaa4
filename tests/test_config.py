"""The configuration file: parsed as data (never executed), validated, errors as path:line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iskra_me162.config import (
    COMPONENTS,
    DEFAULT_STATE_FILE,
    KEYS,
    LEGACY_STATE_FILE,
    Config,
    config_from_text,
    keys_of,
    load_config,
    parse_value,
)
from iskra_me162.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "default" / "iskra-me162"

# The example from the 2016 script's README, byte for byte in syntax (tabs stripped).
ORIGINAL_EXAMPLE = """\
# Settings for the domoticz server

domoticzserver="domoticz.home.fazant.net:8080"
domoticzusername = "XXXXX"
domoticzpassword = "XXXXXXXX"
device_index = 54

# port for ir-head

port = "/dev/ttyUSB0"

# use high speed: switch to high speed reading, may not work
# Set True or False
use_highspeed = False

# print debug information?
# 0 = no debug information printed
# 1 = normal debug information printed
# 2 = detailed information printed
print_debug = 0

# state file is often written, so on a raspberry pi make sure it
# is on a memory back file system (tmpfs)
state_file = "/var/run/me162-state"

# interval for updating domoticz, recommend at least 60 seconds
update_interval = 120
"""


def test_original_readme_example_keeps_working():
    config = config_from_text(ORIGINAL_EXAMPLE, "/etc/default/iskra-me162")
    assert config.domoticzserver == "domoticz.home.fazant.net:8080"
    assert config.domoticzusername == "XXXXX"
    assert config.domoticzpassword == "XXXXXXXX"
    assert config.device_index == 54
    assert config.port == "/dev/ttyUSB0"
    assert config.use_highspeed is False
    assert config.print_debug == 0
    assert config.update_interval == 120
    # The old default is not writable by the service user: mapped, and said so.
    assert config.state_file == DEFAULT_STATE_FILE
    assert any(LEGACY_STATE_FILE in warning for warning in config.warnings)


def test_single_quotes_tabs_and_trailing_comments():
    config = config_from_text(
        "\tport = '/dev/serial/by-id/usb-FTDI-if00'   # the head\n"
        "update_interval=90\n"
        "baud_switch_delay = 0.25\n"
        'domoticzpassword = "p#ss\\"word"  # a # inside quotes is not a comment\n'
        'domoticzusername = "u"\n'
    )
    assert config.port == "/dev/serial/by-id/usb-FTDI-if00"
    assert config.update_interval == 90
    assert config.baud_switch_delay == 0.25
    assert config.domoticzpassword == 'p#ss"word'


def _shipped_headings(text: str) -> dict[str, str]:
    """Key -> the heading of the shipped file's section it is in (a heading is boxed by rules)."""
    where: dict[str, str] = {}
    heading, in_box = "", False
    for line in text.splitlines():
        if re.fullmatch(r"# -{20,}", line):
            in_box = not in_box
            if in_box:
                heading = ""
        elif in_box:
            heading = heading or line.removeprefix("# ")  # its first line
        elif match := re.match(r"#?([a-z_]+) = ", line):
            where[match.group(1)] = heading
    return where


# Keys the shipped file sets to something else than the built-in default, on purpose (its
# comment says what the built-in default is). http_listen: the package serves the status page
# and /metrics on the Pi itself (issue 13); a file without the line (an old one, a test's)
# keeps the endpoint off, so nothing listens unasked.
SHIPPED_NOT_DEFAULT = {"http_listen": "127.0.0.1:8162"}


def test_shipped_file_parses_and_documents_every_key():
    text = SHIPPED.read_text()
    config = load_config(str(SHIPPED))
    assert config.state_file == DEFAULT_STATE_FILE
    assert config.domoticzserver == ""
    assert config.http_listen == SHIPPED_NOT_DEFAULT["http_listen"]
    headings = _shipped_headings(text)
    for key, spec in KEYS.items():
        # Every key appears (commented out is fine for keys without a default).
        assert re.search(rf"^#?{key} = ", text, re.MULTILINE), f"{key} missing from {SHIPPED}"
        match = re.search(rf"^{key} = (.*)$", text, re.MULTILINE)
        if match and spec.default is not None:
            # The shipped value is the built-in default, so the comments stay true.
            expected = SHIPPED_NOT_DEFAULT.get(key, spec.default)
            assert parse_value(match.group(1)) == expected, key
        # ... and it is in the section of the component it configures.
        title = COMPONENTS[spec.component].title
        assert headings[key].startswith(title), f"{key} is under {headings[key]!r}, not {title!r}"
    assert set(headings) == set(KEYS)


def test_every_key_belongs_to_exactly_one_component():
    grouped = [key for name in COMPONENTS for key in keys_of(name)]
    assert sorted(grouped) == sorted(KEYS)
    assert len(grouped) == len(set(grouped))
    assert keys_of(*COMPONENTS) == tuple(KEYS)  # declaration order, whatever order is asked
    assert keys_of("mqtt") == tuple(key for key in KEYS if key.startswith("mqtt_"))
    assert keys_of("http") == ("http_listen", "http_stale_after")
    assert keys_of("derive") == ("state_file",)
    assert "swap_tariffs" in keys_of("domoticz")
    assert "update_interval" in keys_of("daemon")
    with pytest.raises(KeyError, match="no such component: mqqt"):
        keys_of("mqqt")


def test_an_empty_file_gives_the_declared_defaults():
    # The parser's defaults and the dataclass's are one declaration, so they cannot differ.
    config = config_from_text("", "/etc/x")
    assert config == Config(path="/etc/x")
    for key, spec in KEYS.items():
        assert getattr(config, key) == spec.default, key
    assert config_from_text('protocol = "sml"\n').serial_format == "8N1"


def test_loading_the_config_imports_no_simulator_and_no_sink():
    # Start-up memory: the daemon reads its config before anything else; learning the keys
    # must not load the sinks, paho, requests, pyserial or the simulator.
    code = (
        "import sys\n"
        "from iskra_me162.config import KEYS, config_from_text\n"
        "config_from_text('port = \"/dev/ttyUSB0\"\\nupdate_interval = 90\\n')\n"
        "print(' '.join(sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    ours = ("simulator", "urlhandler", "sinks", "port")
    heavy = (*(f"iskra_me162.{name}" for name in ours), "paho", "requests", "serial")
    loaded = result.stdout.split()
    assert "iskra_me162.config" in loaded
    assert not [name for name in loaded if name.startswith(heavy)]


def test_config_module_never_imports_the_simulator():
    import ast

    source = (REPO / "iskra_me162" / "config.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not [name for name in imported if "simulator" in name or "urlhandler" in name]


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_text(text, "/etc/x")
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('port = "/dev/ttyUSB0"\nupdate_intervall = 60\n', 2, "did you mean 'update_interval'"),
        ("update_interval = '60'\n", 1, "must be a whole number"),
        ("update_interval = 0\n", 1, "at least 1"),
        ("update_interval = 1.5\n", 1, "whole number"),
        ("print_debug = 3\n", 1, "at most 2"),
        ("use_highspeed = true\n", 1, "True or False"),
        ("use_highspeed = 1\n", 1, "True or False"),
        ("port = /dev/ttyUSB0\n", 1, "not a plain value"),
        ("port = \n", 1, "no value"),
        ("protocol = \"dlms\"\n", 1, "must be one of"),
        ("serial_format = \"9X1\"\n", 1, "7E1 or 8N1"),
        ('domoticzserver = "host:8080"\n', 1, "device_index is required"),
        ('\n\ndomoticzserver = "host:8080"\ndevice_index = 0\n', 4, "at least 1"),
        ('port = "unterminated\n', 1, "not a plain value"),
        ('port = "sim://me162?speedup=fast"\n', 1, "not a valid simulator URL"),
        ('port = "SIM://nosuchmeter"\n', 1, "not a valid simulator URL"),
        ('port = "http://head.local/"\n', 1, "scheme 'http' is not supported"),
        ('port = "socket://head.local"\n', 1, "needs a host and a TCP port: socket://host:port"),
        ('port = "rfc2217://:2217"\n', 1, "needs a host and a TCP port"),
        ('port = "rfc2217://head:99999"\n', 1, "port is not a valid rfc2217:// URL: Port out"),
        ("just some words\n", 1, "expected 'key = value'"),
        ('domoticzserver = "h:1"\ndevice_index = 3\ndomoticzpassword = "x"\n', 3, "username"),
    ],
)
def test_bad_values_are_reported_with_path_and_line(text, line, fragment):
    error = _error(text)
    assert error.line == line
    assert str(error).startswith(f"/etc/x:{line}: ")
    assert fragment in str(error)


@pytest.mark.parametrize(
    "payload",
    [
        'port = __import__("os").system("touch {marker}")',
        'port = f"{{__import__(\'os\').system(\'touch {marker}\')}}"',
        'port = "/dev/tty" + "USB0"',
        "port = open('{marker}', 'w')",
        'import os; os.system("touch {marker}")',
        'exec("open(\'{marker}\', \'w\')")',
        'port = "/dev/ttyUSB0"; open("{marker}", "w")',
    ],
)
def test_python_code_is_an_error_and_never_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    config_file = tmp_path / "config"
    config_file.write_text(payload.format(marker=marker) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(config_file))
    assert info.value.line == 1
    assert not marker.exists()


def test_unusual_unicode_line_breaks_stay_inside_a_value():
    config = config_from_text('domoticzusername = "a\u2028b\x0cc"\r\nport = "/dev/x"\r\n')
    assert config.domoticzusername == "a\u2028b\x0cc"
    assert config.port == "/dev/x"


def test_update_interval_below_a_minute_warns():
    config = config_from_text("update_interval = 5\n", "/etc/x")
    assert config.update_interval == 5
    assert any("refuse a new session" in warning for warning in config.warnings)


def test_socket_url_with_highspeed_warns():
    config = config_from_text('port = "socket://head.local:2000"\n', "/etc/x")
    assert any("socket://" in warning for warning in config.warnings)
    quiet = config_from_text('port = "socket://h:1"\nuse_highspeed = False\n', "/etc/x")
    assert not any("socket://" in warning for warning in quiet.warnings)


def test_duplicate_key_warns_and_last_wins():
    config = config_from_text("update_interval = 60\nupdate_interval = 90\n", "/etc/x")
    assert config.update_interval == 90
    assert any("set again" in warning for warning in config.warnings)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope"))
    (tmp_path / "binary").write_bytes(b"port = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "binary"))


def test_world_readable_file_with_password_warns(tmp_path):
    path = tmp_path / "config"
    path.write_text('domoticzserver = "h:1"\ndevice_index = 1\n'
                    'domoticzusername = "u"\ndomoticzpassword = "sekret-pw"\n')
    path.chmod(0o644)
    config = load_config(str(path))
    warnings = " ".join(config.warnings)
    assert "readable by every user" in warnings
    assert "sekret-pw" not in warnings
    path.chmod(0o640)
    assert not any("readable by every user" in w for w in load_config(str(path)).warnings)


def test_password_is_not_in_repr():
    config = config_from_text('domoticzusername = "u"\ndomoticzpassword = "hunter2-pw"\n')
    assert "hunter2-pw" not in repr(config)
    assert config.secrets == ("hunter2-pw",)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "iskra_me162", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_check_config_exit_codes(tmp_path):
    good = _cli("--check-config", "--config", str(SHIPPED))
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout
    bad = tmp_path / "bad"
    bad.write_text('port = "/dev/ttyUSB0"\nupdate_intervall = 60\n')
    result = _cli("--check-config", "--config", str(bad))
    assert result.returncode == 78
    assert result.stderr.strip() == (
        f"iskra-me162: {bad}:2: unknown key 'update_intervall'; did you mean 'update_interval'?"
    )
    missing = _cli("--config", str(tmp_path / "absent"))
    assert missing.returncode == 78
    assert "not found" in missing.stderr


def test_check_config_hides_the_password(tmp_path):
    path = tmp_path / "config"
    path.write_text('domoticzserver = "h:1"\ndevice_index = 1\n'
                    'domoticzusername = "u"\ndomoticzpassword = "very-secret-42"\n')
    path.chmod(0o600)
    result = _cli("--check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "very-secret-42" not in result.stdout + result.stderr
    assert "domoticzpassword = (set)" in result.stdout


def test_version_and_usage_errors():
    version = _cli("--version")
    assert version.returncode == 0
    setup_version = re.search(r'^VERSION = "([^"]+)"', (REPO / "setup.py").read_text(), re.M)
    assert setup_version is not None
    assert version.stdout.strip() == f"iskra-me162 {setup_version.group(1)}"
    assert _cli("--dry-run").returncode == 2
    assert _cli("--once", "--check-config").returncode == 2


# --- the one freshness rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_age"),
    [
        ("", 120.0),
        ("update_interval = 300\n", 600.0),
        ("stale_after = 45\n", 45.0),
        ("http_stale_after = 50\n", 50.0),
        ("stale_after = 45\nhttp_stale_after = 50\n", 45.0),
    ],
)
def test_reading_max_age_is_one_rule_for_every_sink(text, max_age):
    assert config_from_text(text, "f").reading_max_age == max_age


def test_the_old_name_http_stale_after_is_read_with_a_warning():
    config = config_from_text("http_stale_after = 50\n", "f")
    assert any("now called stale_after" in warning for warning in config.warnings)
    assert not config_from_text("stale_after = 50\n", "f").warnings
