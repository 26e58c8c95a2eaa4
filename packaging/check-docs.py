#!/usr/bin/python3
"""Check that the manual pages and the systemd unit say what the code does.

The man pages are hand-written roff; this script makes sure they cannot drift from the code:

* iskra-me162(5) documents every key of ``iskra_me162.config.KEYS`` and no other, each under the
  ``.SS`` heading of the component it configures (``config.COMPONENTS``), and the line after each
  key's name states exactly its type, default and limits (the script prints the line it expects,
  so fixing the page is a copy and paste);
* iskra-me162(8) documents every command-line option of ``iskra_me162.cli.build_parser()`` and no
  other, and exactly the exit statuses ``iskra_me162/cli.py`` can return (plus argparse's 2);
* the default paths named in the code appear in the pages;
* the unit's ``RuntimeDirectory=`` is the directory of the default state file, and its
  ``ExecStart=`` is the installed command;
* the template unit ``iskra-me162@.service`` is the plain unit line for line, except that
  instance NAME reads ``/etc/default/iskra-me162-NAME`` and writes its state file in its own
  ``RuntimeDirectory=`` (``--state-file``); the example config of an instance is valid, and the
  package ships both;
* both pages carry the version of setup.py, and debian/changelog's newest entry is that version.

Usage: packaging/check-docs.py [REPO]   (default: the repository this script is in).
Exit status 0 when everything matches, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROFF_ESCAPES = (("\\-", "-"), ("\\(dq", '"'), ("\\(aq", "'"), ("\\e", "\\"), ("\\&", ""))
KIND_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "True or False"}


def plain(roff: str) -> str:
    """A roff text line as the reader sees it (only the escapes these pages use)."""
    for escape, text in ROFF_ESCAPES:
        roff = roff.replace(escape, text)
    return re.sub(r"\\f[BIRP]", "", roff).strip()


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def key_summary(spec: object) -> str:
    """The line iskra-me162(5) must carry under a key: type, default, limits."""
    kind = spec.kind.__name__  # type: ignore[attr-defined]
    default = spec.default  # type: ignore[attr-defined]
    parts = [KIND_NAMES[kind]]
    if default is None:
        parts.append("no default")
    elif isinstance(default, bool):
        parts.append(f"default {default}")
    elif isinstance(default, str):
        parts.append(f'default "{default}"')
    else:
        parts.append(f"default {number(default)}")
    if spec.choices:  # type: ignore[attr-defined]
        parts.append("one of " + ", ".join(f'"{c}"' for c in spec.choices))  # type: ignore[attr-defined]
    low, high = spec.minimum, spec.maximum  # type: ignore[attr-defined]
    if low is not None and high is not None:
        parts.append(f"from {number(low)} to {number(high)}")
    elif low is not None:
        parts.append(f"at least {number(low)}")
    elif high is not None:
        parts.append(f"at most {number(high)}")
    return ", ".join(parts) + "."


def sections(lines: str | list[str], macro: str = ".SH") -> dict[str, list[str]]:
    """Lines of a roff page by ``.SH`` section name; ``macro=".SS"``: of a section by subsection."""
    result: dict[str, list[str]] = {}
    current = ""
    for line in lines.splitlines() if isinstance(lines, str) else lines:
        if line.startswith(macro + " "):
            current = plain(line[len(macro) + 1 :].strip('"'))
            result.setdefault(current, [])  # a heading used twice: one section
        else:
            result.setdefault(current, []).append(line)
    return result


def tagged_items(lines: list[str]) -> Iterator[tuple[str, str]]:
    """(tag line, line after it) of every ``.TP`` item, both as plain text."""
    for index, line in enumerate(lines):
        if line.strip() == ".TP" and index + 1 < len(lines):
            tag = lines[index + 1]
            after = lines[index + 2] if index + 2 < len(lines) else ""
            yield plain(re.sub(r"^\.(BR|BI|IR|B|I)\s+", "", tag).replace('"', "")), plain(after)


def check_keys(page: str, problems: list[str]) -> None:
    from iskra_me162.config import COMPONENTS, KEYS

    items: dict[str, tuple[str, str]] = {}  # key -> (its subsection, the line after its name)
    for heading, lines in sections(sections(page).get("KEYS", []), ".SS").items():
        for tag, after in tagged_items(lines):
            items[tag.split()[0]] = (heading, after)
    for key, spec in KEYS.items():
        title = COMPONENTS[spec.component].title
        if key not in items:
            problems.append(f"iskra-me162.5: key {key} is not documented (section KEYS, {title})")
            continue
        heading, after = items[key]
        if heading != title:
            problems.append(f"iskra-me162.5: key {key} is under {heading!r}; its place: {title!r}")
        if after != key_summary(spec):
            problems.append(
                f"iskra-me162.5: key {key}: says {after!r}, the code has {key_summary(spec)!r}"
            )
    for key in sorted(set(items) - set(KEYS)):
        problems.append(f"iskra-me162.5: documents key {key}, which the code does not have")


def cli_exit_statuses(cli_source: str) -> set[int]:
    """Every status cli.py can return: its EX_* constants, literal returns, argparse's 2."""
    tree = ast.parse(cli_source)
    constants: dict[str, int] = {}
    statuses = {2}  # argparse: usage error
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("EX_"):
                    constants[target.id] = node.value.value
    statuses.update(constants.values())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Return)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int)
        ):
            statuses.add(node.value.value)
    return statuses


def check_cli(page: str, cli_source: str, problems: list[str]) -> None:
    from iskra_me162.cli import build_parser

    parts = sections(page)
    code_options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    documented = set()
    for tag, _after in tagged_items(parts.get("OPTIONS", [])):
        documented.update(re.findall(r"--[a-z][a-z-]*", tag))
    documented.discard("--help")
    for option in sorted(code_options - documented):
        problems.append(f"iskra-me162.8: option {option} is not documented (section OPTIONS)")
    for option in sorted(documented - code_options):
        problems.append(f"iskra-me162.8: documents option {option}, which the code does not have")

    code_statuses = cli_exit_statuses(cli_source)
    documented_statuses = {
        int(tag.split()[0])
        for tag, _after in tagged_items(parts.get("EXIT STATUS", []))
        if tag.split() and tag.split()[0].isdigit()
    }
    for status in sorted(code_statuses - documented_statuses):
        problems.append(f"iskra-me162.8: exit status {status} is not documented (EXIT STATUS)")
    for status in sorted(documented_statuses - code_statuses):
        problems.append(
            f"iskra-me162.8: documents exit status {status}, which cli.py never returns"
        )


def check_paths(pages: str, unit_text: str, problems: list[str]) -> None:
    from iskra_me162 import cli, config

    text = plain(pages)
    for name, path in (
        ("config.DEFAULT_PATH", config.DEFAULT_PATH),
        ("config.DEFAULT_STATE_FILE", config.DEFAULT_STATE_FILE),
        ("config.LEGACY_STATE_FILE", config.LEGACY_STATE_FILE),
        ("cli.DEFAULT_PIDFILE", cli.DEFAULT_PIDFILE),
    ):
        if path not in text:
            problems.append(f"man pages: {name} ({path}) is not mentioned")

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text)
    service = unit["Service"]
    runtime_dir = "/run/" + service.get("RuntimeDirectory", "").strip()
    state_dir = str(Path(config.DEFAULT_STATE_FILE).parent)
    if runtime_dir != state_dir:
        problems.append(
            f"unit: RuntimeDirectory= gives {runtime_dir}, but the default state file is in "
            f"{state_dir}"
        )
    if service.get("ExecStart", "").split()[:1] != ["/usr/bin/iskra-me162"]:
        problems.append("unit: ExecStart= must run /usr/bin/iskra-me162")


def unit_lines(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting of a unit file, in order (repeated keys too)."""
    section, result = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        result.append((section, key.strip(), value.strip()))
    return result


# What iskra-me162@.service may say differently from iskra-me162.service: only these settings.
TEMPLATE_OWN = {("Unit", "Description"), ("Service", "ExecStart"), ("Service", "RuntimeDirectory")}


def check_template(unit_text: str, template_text: str, problems: list[str]) -> None:
    """The template unit is the plain unit with an instance's own config and state file."""
    from iskra_me162 import config

    plain_lines = [line for line in unit_lines(unit_text) if line[:2] not in TEMPLATE_OWN]
    template_lines = [line for line in unit_lines(template_text) if line[:2] not in TEMPLATE_OWN]
    for section, key, value in plain_lines:
        if (section, key, value) not in template_lines:
            problems.append(
                f"iskra-me162@.service: lacks [{section}] {key}={value} of the plain unit"
            )
    for section, key, value in template_lines:
        if (section, key, value) not in plain_lines:
            problems.append(
                f"iskra-me162@.service: [{section}] {key}={value} is not in the plain unit"
            )
    own = {(section, key): value for section, key, value in unit_lines(template_text)}
    runtime_dir = own.get(("Service", "RuntimeDirectory"), "")
    if runtime_dir != "iskra-me162-%i":
        problems.append(f"iskra-me162@.service: RuntimeDirectory={runtime_dir}, not iskra-me162-%i")
    state_file = f"/run/{runtime_dir}/{Path(config.DEFAULT_STATE_FILE).name}"
    exec_start = f"/usr/bin/iskra-me162 --config {config.DEFAULT_PATH}-%i --state-file {state_file}"
    if own.get(("Service", "ExecStart")) != exec_start:
        problems.append(
            f"iskra-me162@.service: ExecStart={own.get(('Service', 'ExecStart'))}; "
            f"expected ExecStart={exec_start}"
        )
    if "%i" not in own.get(("Unit", "Description"), ""):
        problems.append("iskra-me162@.service: Description= does not name the instance (%i)")


def check_instance_example(repo: Path, problems: list[str]) -> None:
    """systemd/iskra-me162-NAME: a valid config, shipped as an example with the template unit."""
    from iskra_me162.config import config_from_text
    from iskra_me162.errors import ConfigError

    example = repo / "systemd" / "iskra-me162-NAME"
    try:
        config_from_text(example.read_text(encoding="utf-8"), str(example))
    except (OSError, ConfigError) as error:
        problems.append(f"systemd/iskra-me162-NAME: {error}")
    shipped = (repo / "debian/iskra-me162.examples").read_text(encoding="utf-8").split()
    if "systemd/iskra-me162-NAME" not in shipped:
        problems.append("debian/iskra-me162.examples does not ship systemd/iskra-me162-NAME")
    link = repo / "debian" / "iskra-me162@.service"
    if not link.is_file() or link.resolve() != (repo / "systemd/iskra-me162@.service").resolve():
        problems.append("debian/iskra-me162@.service is not systemd/iskra-me162@.service")


def setup_version(setup_source: str) -> str:
    """``VERSION = "..."`` (or a literal ``version=``) of setup.py, read without running it."""
    for node in ast.walk(ast.parse(setup_source)):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == "VERSION" for t in node.targets)
        ):
            return str(node.value.value)
        if (
            isinstance(node, ast.keyword)
            and node.arg == "version"
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    raise ValueError('setup.py: no VERSION = "..." and no literal version=')


def check_versions(repo: Path, pages: dict[str, str], problems: list[str]) -> None:
    version = setup_version((repo / "setup.py").read_text(encoding="utf-8"))
    for name, page in pages.items():
        header = next((line for line in page.splitlines() if line.startswith(".TH ")), "")
        fields = re.findall(r'"([^"]*)"', header)
        source = plain(fields[1]) if len(fields) > 1 else ""
        if source != f"iskra-me162 {version}":
            problems.append(f"{name}: .TH says {source!r}, setup.py has version {version}")
    first = (repo / "debian/changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.match(r"iskra-me162 \(([^)]+)\)", first)
    if match is None or match.group(1) != version:
        problems.append(f"debian/changelog: newest entry is {first!r}, setup.py has {version}")


def main(argv: list[str]) -> int:
    repo = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    page8 = (repo / "docs/iskra-me162.8").read_text(encoding="utf-8")
    page5 = (repo / "docs/iskra-me162.5").read_text(encoding="utf-8")
    unit_text = (repo / "systemd/iskra-me162.service").read_text(encoding="utf-8")
    template_text = (repo / "systemd/iskra-me162@.service").read_text(encoding="utf-8")
    cli_source = (repo / "iskra_me162/cli.py").read_text(encoding="utf-8")
    problems: list[str] = []
    check_keys(page5, problems)
    check_cli(page8, cli_source, problems)
    check_paths(page8 + page5, unit_text, problems)
    check_template(unit_text, template_text, problems)
    check_instance_example(repo, problems)
    check_versions(repo, {"iskra-me162.8": page8, "iskra-me162.5": page5}, problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
