"""Property-based tests of the config parser (hypothesis), issue #5 "hostile and broken input".

* Any text, any bytes in a file, and any mutation of the shipped config file give a Config or a
  ConfigError that names the file and a line of it: never another exception.
* Python code in any position (a value, a key, a whole line, after a valid setting, in an
  f-string, spread over several lines) is an error or an inert string, and never runs: the
  payloads would create a canary file.
* Values that fit a key's type and limits survive writing and reading back exactly, including
  strings with quotes, backslashes and ``#`` (the password may contain anything printable).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iskra_me162.config import KEYS, config_from_text, load_config
from iskra_me162.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = (REPO / "etc" / "default" / "iskra-me162").read_text()
PATH = "/etc/default/iskra-me162"

PROPERTIES = settings(
    max_examples=1000,
    deadline=None,  # a loaded 2-core CI machine must not turn slowness into failures
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def parse(text: str) -> object:
    """config_from_text, with the only allowed failure checked for a useful location."""
    try:
        return config_from_text(text, PATH)
    except ConfigError as error:
        assert error.path == PATH
        assert 0 <= error.line <= max(1, len(text.splitlines())), (error.line, text)
        assert str(error).startswith(f"{PATH}:"), str(error)
        return error


# --- arbitrary input --------------------------------------------------------------------------


@PROPERTIES
@given(st.text())
def test_any_text_gives_a_config_or_a_located_config_error(text):
    parse(text)


# Lines built from the grammar's own pieces reach much deeper than random text.
KEY_NAMES = st.sampled_from([*KEYS, "update_intervall", "Port", "_x", "import"])
VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["True", "False", "true", "yes", "None", "", "0x10", "1_000", "1e999"]),
    st.text(max_size=30).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.text(max_size=30),
)
LINES = st.builds(
    lambda key, eq, value, comment: f"{key}{eq}{value}{comment}",
    KEY_NAMES,
    st.sampled_from(["=", " = ", "\t=\t", "==", ":", " "]),
    VALUES,
    st.sampled_from(["", " # c", "#", ' # "quoted"', " #=#"]),
)


@PROPERTIES
@given(st.lists(LINES, max_size=12))
def test_grammar_shaped_lines_give_a_config_or_a_located_config_error(lines):
    result = parse("\n".join(lines))
    if not isinstance(result, ConfigError):
        for key, spec in KEYS.items():
            value = getattr(result, key)
            if value is None:
                continue
            assert isinstance(value, spec.kind), (key, value)
            if spec.minimum is not None:
                assert value >= spec.minimum
            if spec.maximum is not None:
                assert value <= spec.maximum
            if isinstance(value, float):
                assert math.isfinite(value), (key, value)


@PROPERTIES
@given(data=st.binary(max_size=2000))
def test_any_bytes_in_the_file_give_a_config_or_a_config_error(tmp_path, data):
    path = tmp_path / "config"
    path.write_bytes(data)
    path.chmod(0o600)
    try:
        load_config(str(path))
    except ConfigError as error:
        assert error.path == str(path)


def mutate(text: str, seed: int) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(chars) + 1)
        action = rng.randrange(4)
        if action == 0 and chars:
            del chars[min(position, len(chars) - 1)]
        elif action == 1:
            chars.insert(position, rng.choice('"\'#=\\\n\t ()[]{}:;,.+-*/0123456789aTFx\x00\u00e4'))
        elif action == 2 and chars:
            chars[min(position, len(chars) - 1)] = chr(rng.randrange(0x20, 0x7F))
        else:
            line_start = text.rfind("\n", 0, position) + 1
            chars[line_start:line_start] = list(rng.choice(['"', "#", "x = ", "f", "__import__"]))
    return "".join(chars)


@PROPERTIES
@given(st.integers(0, 2**32))
def test_mutations_of_the_shipped_file(seed):
    parse(mutate(SHIPPED, seed))


# --- Python code never runs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary") / "code-ran"


CODE = [
    '__import__("pathlib").Path({c!r}).touch()',
    '__import__("os").system("touch {c}")',
    "open({c!r}, 'w')",
    'exec("open({c!r}, \\"w\\")")',
    'eval("open({c!r}, \\"w\\")")',
    "(lambda: open({c!r}, 'w'))()",
    "[open({c!r}, 'w') for _ in 'x']",
    "(x := open({c!r}, 'w'))",
    "breakpoint() or open({c!r}, 'w')",
]
WRAPPERS = [
    "port = {code}",
    "{code}",
    'port = f"{{{code}}}"',
    "port = f'{{{code}}}'",
    'port = rf"{{{code}}}"',
    'port = "/dev/ttyUSB0" + str({code})',
    'port = "/dev/ttyUSB0"; {code}',
    'port = "/dev/ttyUSB0" if {code} else ""',
    "update_interval = 60 * 2 or {code}",
    'domoticzpassword = "x" \\\n    + str({code})',
    'port = """\n{code}\n"""',
    "port = (\n    {code}\n)",
    "print_debug = {code} # comment",
    '# comment\n{code}\nport = "/dev/ttyUSB0"',
]


def test_python_code_anywhere_is_an_error_and_never_runs(canary):
    # Every payload in every position (all combinations, not a sample).
    for code, wrapper, before in itertools.product(
        CODE, WRAPPERS, ["", 'port = "/dev/ttyUSB0"\n', "# settings\n\n"]
    ):
        text = before + wrapper.format(code=code.format(c=str(canary))) + "\n"
        with pytest.raises(ConfigError):
            config_from_text(text, PATH)
        assert not canary.exists(), f"code in the config ran: {text!r}"


@PROPERTIES
@given(code=st.sampled_from(CODE))
def test_code_inside_a_quoted_string_is_only_text(canary, code):
    payload = code.format(c=str(canary))
    quoted = '"' + payload.replace("\\", "\\\\").replace('"', '\\"') + '"'
    config = config_from_text(f"domoticzusername = {quoted}\n", PATH)
    assert config.domoticzusername == payload  # kept as the characters it is
    assert not canary.exists()


# --- round trip of valid values -------------------------------------------------------------------


# Characters Python's str.splitlines() takes as line ends: the parser splits lines with it, and
# the syntax has no escape for them (only \n and \t), so a value cannot contain them.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
FREE_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=_LINE_BREAKS), max_size=40
)


def quoted(value: str) -> str:
    """A string in the config syntax: double quotes, with \\\\, \\", \\n and \\t escaped."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def number_for(spec) -> st.SearchStrategy:
    """Integers in the key's limits; floats as decimals with up to 3 places (the syntax wants a
    decimal point and no exponent), in the limits."""
    low = spec.minimum if spec.minimum is not None else -(10**9)
    high = spec.maximum if spec.maximum is not None else 10**9
    if spec.kind is int:
        return st.integers(math.ceil(low), int(high))
    return st.integers(math.ceil(low * 1000), int(high * 1000)).map(lambda n: n / 1000)


NUMERIC_KEYS = [
    key
    for key, spec in KEYS.items()
    if spec.kind in (int, float) and spec.check is None and not spec.choices
]
BOOL_KEYS = [key for key, spec in KEYS.items() if spec.kind is bool]


@st.composite
def settings_and_text(draw: st.DrawFn) -> tuple[dict[str, object], str]:
    chosen: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(NUMERIC_KEYS), unique=True, max_size=5)):
        chosen[key] = draw(number_for(KEYS[key]))
    for key in draw(st.lists(st.sampled_from(BOOL_KEYS), unique=True, max_size=3)):
        chosen[key] = draw(st.booleans())
    chosen["domoticzusername"] = draw(FREE_TEXT.filter(bool))
    chosen["domoticzpassword"] = draw(FREE_TEXT)
    lines = []
    for key, value in chosen.items():
        if isinstance(value, str):
            text = quoted(value)
        elif isinstance(value, bool):
            text = str(value)
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        comment = draw(st.sampled_from(["", "  # a comment", ' # "quoted" #']))
        lines.append(f"{key} = {text}{comment}")
    return chosen, "\n".join(lines) + "\n"


@PROPERTIES
@given(settings_and_text())
def test_valid_values_survive_writing_and_reading_back(case):
    chosen, text = case
    config = config_from_text(text, PATH)
    for key, value in chosen.items():
        assert getattr(config, key) == value, (key, text)
    assert config.secrets == ((chosen["domoticzpassword"],) if chosen["domoticzpassword"] else ())


# --- findings of fuzz/fuzz_config.py ------------------------------------------------------------


@pytest.mark.parametrize("key", ["domoticz_ca_file", "mqtt_ca_file"])
def test_a_ca_file_name_the_system_refuses_is_a_config_error(key):
    # Found by fuzz/fuzz_config.py: a file name longer than the file system allows.
    with pytest.raises(ConfigError, match=key):
        config_from_text(f'{key} = "/etc/{"x" * 300}.pem"\n', PATH)
