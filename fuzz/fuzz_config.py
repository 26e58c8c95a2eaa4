"""atheris harness: the configuration parser on arbitrary text.

Properties checked on every input (a violation is a crash the fuzzer reports):

* nothing but ConfigError is raised;
* a text that parses gives a Config whose every key has the type and limits KEYS allows, and
  parsing the same text again gives the same Config (no hidden state).

That nothing in the file is ever executed is proven by tests/test_config_properties.py with a
canary; here the point is coverage of the line and value grammar.

Run: ``.venv/bin/python fuzz/fuzz_config.py [libFuzzer flags] [corpus dirs]``, or through
``fuzz/run.sh``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["iskra_me162"]):
    from iskra_me162.config import KEYS, config_from_text
    from iskra_me162.errors import ConfigError


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        config = config_from_text(text, "fuzz.conf")
    except ConfigError:
        return
    for key, spec in KEYS.items():
        value = getattr(config, key)
        if value is None:
            assert spec.default is None, key
            continue
        assert isinstance(value, spec.kind), (key, value)
        if spec.minimum is not None:
            assert value >= spec.minimum, (key, value)
        if spec.maximum is not None:
            assert value <= spec.maximum, (key, value)
        if spec.choices:
            assert value in spec.choices, (key, value)
    assert config_from_text(text, "fuzz.conf") == config


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
