"""Locate the real meter captures in ``../shared/testdata`` (beside the repository root).

Tests that need them call :func:`require_testdata`; when the folder is absent they are skipped
with a message that says where the data was looked for, never passed silently.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("ISKRA_TESTDATA", REPO_ROOT.parent / "shared" / "testdata"))


def require_testdata() -> Path:
    if not (TESTDATA / "expected.json").is_file():
        pytest.skip(f"real meter captures not found at {TESTDATA} (set ISKRA_TESTDATA)")
    return TESTDATA


@cache
def expected() -> dict[str, dict]:
    return json.loads((require_testdata() / "expected.json").read_text())


def captures(prefix: str) -> list[str]:
    """Names (relative to the testdata folder) of the captures under ``prefix``, sorted.

    Evaluated at collection time, so it must not skip: an absent folder gives one placeholder
    name and the test using it skips through :func:`require_testdata`.
    """
    path = TESTDATA / "expected.json"
    if not path.is_file():
        return ["<testdata missing>"]
    return sorted(name for name in json.loads(path.read_text()) if name.startswith(prefix))
