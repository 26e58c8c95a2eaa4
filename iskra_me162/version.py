"""The program's version, read from the installed package metadata (setup.py is its source).

Imported only by ``--version`` and the start-up log line: importlib.metadata costs start-up time.
"""

from __future__ import annotations

import re
from pathlib import Path

DISTRIBUTION = "iskra-me162"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    # Running from a source checkout that was never installed: read setup.py itself.
    setup_py = Path(__file__).resolve().parent.parent / "setup.py"
    try:
        match = re.search(r'^VERSION = "([^"]+)"', setup_py.read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1) if match else "unknown"
