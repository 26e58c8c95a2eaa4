"""docker-compose.yml as data, for the tests that read it and the one that runs it.

:func:`compose_services` parses the file (PyYAML); with ``two_meters=True`` the commented example
at its end (``grid`` and ``heatpump``) is uncommented and replaces the single service, as the
README tells users to do. :func:`expand` is compose's variable substitution with no variable set.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SINGLE_SERVICE = "iskra-me162"
EXAMPLE_START = "  #grid:"  # where the commented two-meter example begins


def compose_services(*, two_meters: bool = False) -> dict[str, dict]:
    """The services of docker-compose.yml (YAML anchors merged), by name."""
    text = COMPOSE.read_text(encoding="utf-8")
    if not two_meters:
        return yaml.safe_load(text)["services"]
    example = text[text.index(EXAMPLE_START) :]
    uncommented = text.replace(example, re.sub(r"^  #", "  ", example, flags=re.M))
    services = yaml.safe_load(uncommented)["services"]
    del services[SINGLE_SERVICE]  # the example replaces it
    return services


def expand(text: str) -> str:
    """Compose variable substitution with nothing set: ``${NAME:-default}`` -> default."""
    unset = re.search(r"\$(?!\{[A-Z_][A-Z0-9_]*:-[^}]*\})", text)
    assert unset is None, f"{text!r}: every variable needs a default (${{NAME:-default}})"
    return re.sub(r"\$\{[A-Z_][A-Z0-9_]*:-([^}]*)\}", r"\1", text)
