"""The documentation stays true to the code: README renders cleanly and lists every config key
with its real default; the two set-up commands exist; CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iskra_me162.config import KEYS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.rst").read_text()


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


def test_the_two_commands_and_ci():
    for command in ("scripts/demo", "scripts/test"):
        assert f"    {command}\n" in README
        assert (REPO / command).stat().st_mode & 0o111
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test$", ci, re.MULTILINE)
