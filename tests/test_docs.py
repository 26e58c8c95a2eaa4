"""The documentation stays true to the code: README renders cleanly and lists every config key
with its real default; the two set-up commands exist; CI runs the README's test command."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iskra_me162.config import KEYS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.rst").read_text()
CHECK_DOCS = REPO / "packaging" / "check-docs.py"


def test_readme_renders_without_warnings():
    docutils_core = pytest.importorskip("docutils.core")
    import io

    warnings = io.StringIO()
    docutils_core.publish_doctree(
        README, settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": warnings}
    )
    assert warnings.getvalue() == ""


@pytest.mark.parametrize("key", list(KEYS))
def test_readme_config_table_has_every_key_with_its_default(key):
    spec = KEYS[key]
    row = re.search(rf"^``{key}``\s+(\S.*?)\s{{2,}}", README, re.MULTILINE)
    assert row, f"README's configuration table lacks {key}"
    shown = row.group(1)
    if spec.default is None:
        assert "required" in shown
    elif isinstance(spec.default, str):
        assert shown == f'``"{spec.default}"``'
    elif isinstance(spec.default, float) and spec.default.is_integer():
        assert shown == f"``{int(spec.default)}``"
    else:
        assert shown == f"``{spec.default}``"


def test_readme_config_table_is_in_the_order_of_the_components():
    rows = re.findall(r"^``([a-z_]+)``\s{2,}", README, re.MULTILINE)  # the table's key column
    assert rows == list(KEYS)


def test_the_two_commands_and_ci():
    for command in ("scripts/demo", "scripts/test"):
        assert f"    {command}\n" in README
        assert (REPO / command).stat().st_mode & 0o111
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test$", ci, re.MULTILINE)


def _check_docs():  # the packaging script (its name has a dash), loaded as a module
    spec = importlib.util.spec_from_file_location("check_docs", CHECK_DOCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_man_pages_and_unit_match_the_code():
    result = subprocess.run(
        [sys.executable, str(CHECK_DOCS), str(REPO)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_man_page_check_wants_each_key_under_its_component():
    check_docs = _check_docs()
    page = (REPO / "docs" / "iskra-me162.5").read_text()
    assert ".SS The state file\n" in page
    problems: list[str] = []
    check_docs.check_keys(page.replace(".SS The state file\n", ""), problems)
    assert problems == [
        "iskra-me162.5: key state_file is under 'The daemon'; its place: 'The state file'"
    ]


def test_help_and_man_pages_name_both_protocols_and_every_sink():
    from iskra_me162.cli import build_parser

    check_docs = _check_docs()
    page8 = check_docs.sections((REPO / "docs" / "iskra-me162.8").read_text())
    page5 = check_docs.sections((REPO / "docs" / "iskra-me162.5").read_text())
    texts = {
        "--help": build_parser().description or "",
        "iskra-me162(8) NAME": " ".join(map(check_docs.plain, page8["NAME"])),
        "iskra-me162(8) DESCRIPTION": " ".join(map(check_docs.plain, page8["DESCRIPTION"])),
        "iskra-me162(5) DESCRIPTION": " ".join(map(check_docs.plain, page5["DESCRIPTION"])),
    }
    for where, text in texts.items():
        for name in ("IEC 62056-21", "SML", "Domoticz", "HTTP endpoint", "MQTT"):
            assert name in text, f"{where} does not name {name}"
    for where in ("--help", "iskra-me162(8) DESCRIPTION", "iskra-me162(5) DESCRIPTION"):
        assert "Home Assistant" in texts[where], where
