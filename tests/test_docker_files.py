"""The Docker image and compose files, checked without a Docker engine.

* The Dockerfile is read and linted (base image tag, non-root USER, HEALTHCHECK, no ADD).
* docker-compose.yml is parsed (PyYAML) and checked against the Dockerfile, the install script
  and the shipped container configuration, which the real config parser must accept.
* The image's install step (docker/install.sh package) runs here for real, on a copy of exactly
  what the Dockerfile's COPY lines copy, with Debian's python3 and packages as in the image.
* The HEALTHCHECK command runs against a real HTTP endpoint.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iskra_me162.config import load_config
from iskra_me162.sinks.http import HttpEndpoint, parse_listen
from tests.compose import COMPOSE, SINGLE_SERVICE, compose_services, expand
from tests.readouts import make_deriver, make_readout

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "docker" / "install.sh"
CONTAINER_CONFIG = ROOT / "docker" / "iskra-me162.conf"
DOCS = ROOT / "README.rst"  # section "Home Assistant"
CONFIG_PATH = "/etc/default/iskra-me162"
DEBIAN_PYTHON = Path("/usr/bin/python3")
# setup.py's install_requires (PyPI names) -> the Debian packages that provide them.
DEBIAN_NAMES = {
    "pyserial": "python3-serial",
    "requests": "python3-requests",
    "python-daemon": "python3-daemon",
}


# --- reading the files ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def instruction(name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile() if keyword == name]


def healthcheck_of_dockerfile() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's --options and its exec-form command."""
    (arguments,) = instruction("HEALTHCHECK")
    options: dict[str, str] = {}
    rest = arguments
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD", "HEALTHCHECK CMD [...] (exec form)"
    return options, json.loads(command)


def compose_service() -> dict:
    services = compose_services()
    assert list(services) == [SINGLE_SERVICE]
    return services[SINGLE_SERVICE]


def shell_variable(name: str) -> str:
    match = re.search(rf'^{name}="?([^"\n]*)"?$', INSTALL.read_text(encoding="utf-8"), re.M)
    assert match, f"docker/install.sh sets no {name}"
    return match.group(1)


def dockerignore_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay within a directory, ``**``
    spans any number of them."""
    regex = ""
    rest = pattern
    while rest:
        if rest.startswith("**/"):
            regex, rest = regex + "(?:.*/)?", rest[3:]
        elif rest.startswith("**"):
            regex, rest = regex + ".*", rest[2:]
        elif rest[0] == "*":
            regex, rest = regex + "[^/]*", rest[1:]
        elif rest[0] == "?":
            regex, rest = regex + "[^/]", rest[1:]
        else:
            regex, rest = regex + re.escape(rest[0]), rest[1:]
    return regex


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context.

    A rule matches a path or any directory above it; the last matching rule wins, and ``!``
    rules take back what earlier ones excluded (Docker's semantics, for the patterns we use).
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = dockerignore_regex(rule.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def copy_lines() -> list[tuple[list[str], str]]:
    """The Dockerfile's COPY instructions as (sources, destination)."""
    copies = []
    for arguments in instruction("COPY"):
        *sources, destination = shlex.split(arguments)
        assert not any(source.startswith("--") for source in sources), "no COPY --from/--chown"
        copies.append((sources, destination))
    return copies


def install_requires() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [re.split(r"[<>=!~ ;\[]", item)[0] for item in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no install_requires")


# --- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_lint():
    instructions = dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    (base,) = instruction("FROM")
    image, _, tag = base.partition(":")
    assert image == "debian" and tag.startswith("bookworm"), "Debian bookworm, as the .deb"
    assert tag != "latest"
    assert "ADD" not in keywords, "COPY only: ADD fetches URLs and unpacks archives"
    assert keywords.count("USER") == 1
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    (user,) = instruction("USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert user == shell_variable("SERVICE_USER")
    for arguments in instruction("RUN"):
        assert not re.search(r"\b(curl|wget)\b", arguments)
    assert "HEALTHCHECK" in keywords
    assert instruction("EXPOSE") == ["8080"]
    entrypoint = json.loads(instruction("ENTRYPOINT")[0])
    command = json.loads(instruction("CMD")[0])
    assert entrypoint + command == ["iskra-me162", "--config", CONFIG_PATH]


def test_healthcheck_needs_no_curl_and_asks_healthz_on_the_exposed_port():
    options, command = healthcheck_of_dockerfile()
    assert command[0] == "/usr/bin/python3"
    assert "http://127.0.0.1:8080/healthz" in command[-1]
    assert set(options) == {"interval", "timeout", "start-period", "retries"}


def test_healthcheck_command_against_a_real_endpoint():
    if not DEBIAN_PYTHON.exists():
        pytest.skip(f"{DEBIAN_PYTHON} (the image's interpreter) is not on this machine")
    _, command = healthcheck_of_dockerfile()
    url = "http://127.0.0.1:8080/healthz"
    assert command[-1].count(url) == 1

    def check(port: int) -> int:
        here = [*command[:-1], command[-1].replace(url, f"http://127.0.0.1:{port}/healthz")]
        return subprocess.run(here, capture_output=True, timeout=30).returncode

    endpoint = HttpEndpoint("127.0.0.1:0", stale_after=60)
    endpoint.start()
    port = endpoint.address[1]
    try:
        assert check(port) != 0  # no reading yet: 503
        endpoint.publish(make_deriver().derive(make_readout(time.monotonic(), {"1.8.0": "1.5"})))
        assert check(port) == 0
        stale = make_readout(time.monotonic() - 61, {"1.8.0": "1.5"})
        endpoint.publish(make_deriver().derive(stale))
        assert check(port) != 0  # stale
    finally:
        endpoint.close()
    assert check(port) != 0  # nothing listening


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_builds_this_image_and_restarts_it():
    service = compose_service()
    assert service["build"] in (".", {"context": "."})
    image, _, tag = service["image"].partition(":")
    assert image == "iskra-me162" and tag and tag != "latest"
    assert service["restart"] in ("unless-stopped", "always")
    assert service.get("init") is True  # a signal-forwarding PID 1


def test_compose_runs_as_the_images_unprivileged_user():
    service = compose_service()
    (user,) = instruction("USER")
    assert service["user"] == user
    assert service["user"] not in ("root", "0")
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


def test_compose_maps_the_ir_head_with_access_for_dialout():
    service = compose_service()
    (mapping,) = service["devices"]
    host, container = expand(mapping).split(":")
    assert host == "/dev/ttyUSB0" and container == "/dev/ttyUSB0"
    assert "ISKRA_DEVICE" in mapping
    assert [expand(group) for group in service["group_add"]] == ["dialout"]
    assert "--groups dialout" in INSTALL.read_text(encoding="utf-8")  # the user too


def test_compose_publishes_the_http_port():
    (mapping,) = compose_service()["ports"]
    assert expand(str(mapping)).rsplit(":", 1) == ["8080", "8080"]
    assert expand(str(mapping)).rsplit(":", 1)[1] == instruction("EXPOSE")[0]


def test_compose_mounts_the_config_read_only():
    (volume,) = compose_service()["volumes"]
    host, container, mode = expand(volume).split(":")
    assert container == CONFIG_PATH
    assert mode == "ro"
    assert (ROOT / host).resolve() == CONTAINER_CONFIG


def test_compose_state_directory_is_a_tmpfs_owned_by_the_service_user():
    (tmpfs,) = compose_service()["tmpfs"]
    path, _, options = tmpfs.partition(":")
    settings = dict(option.split("=") for option in options.split(","))
    assert path == shell_variable("STATE_DIR")
    assert settings["uid"] == settings["gid"] == shell_variable("SERVICE_ID")
    assert load_config(str(CONTAINER_CONFIG)).state_file.startswith(path + "/")


def test_compose_healthcheck_is_the_dockerfiles():
    options, command = healthcheck_of_dockerfile()
    check = compose_service()["healthcheck"]
    assert check["test"] == ["CMD", *command]
    assert check["interval"] == options["interval"]
    assert check["timeout"] == options["timeout"]
    assert check["start_period"] == options["start-period"]
    assert str(check["retries"]) == options["retries"]


def test_compose_variables_are_the_documented_ones():
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-", COMPOSE.read_text(encoding="utf-8")))
    documented = set(re.findall(r"^``(ISKRA_[A-Z_]+)``", DOCS.read_text(encoding="utf-8"), re.M))
    assert used == documented


# --- the configuration inside the container -------------------------------------------------------


def test_container_config_is_valid_and_matches_the_image():
    config = load_config(str(CONTAINER_CONFIG))  # the daemon's own parser
    host, port = parse_listen(config.http_listen)
    assert host == "0.0.0.0"  # reachable through the published port
    assert str(port) == instruction("EXPOSE")[0]
    device = expand(compose_service()["devices"][0]).split(":")[1]
    assert config.port == device
    assert ([f"docker/{CONTAINER_CONFIG.name}"], CONFIG_PATH) in copy_lines()


# --- the build context and the install step ------------------------------------------------------


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    for sources, _ in copy_lines():
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignore_excludes(source), f"{source} is excluded by .dockerignore"
    for path in ("iskra_me162/sinks/http.py", "docker/install.sh", "setup.py", "README.rst"):
        assert not dockerignore_excludes(path)
    for path in (".git/config", ".venv/bin/python", "tests/test_config.py", "debian/control"):
        assert dockerignore_excludes(path)
    assert dockerignore_excludes("iskra_me162/__pycache__/cli.cpython-311.pyc")


def test_image_packages_are_the_runtime_dependencies_of_the_package():
    runtime = shell_variable("RUNTIME_PACKAGES").split()
    # Besides the Python dependencies: the interpreter, and the public CAs (TLS to Domoticz, MQTT).
    assert sorted(DEBIAN_NAMES[name] for name in install_requires()) == sorted(
        package for package in runtime if package not in ("python3", "ca-certificates")
    )
    control = ROOT / "debian" / "control"
    if control.exists():  # the .deb builds against the same Debian packages
        text = control.read_text(encoding="utf-8")
        for package in runtime:
            assert re.search(rf"\b{re.escape(package)}\b", text), f"debian/control: {package}"


def test_install_script_is_valid_posix_shell():
    subprocess.run(["sh", "-n", str(INSTALL)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    subprocess.run(["shellcheck", "--shell=sh", str(INSTALL)], check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run ``install.sh package`` as the image does, on what its COPY lines copy."""
    needed = ["venv", "ensurepip", "setuptools", "wheel", "serial", "requests", "daemon"]
    probe = f"import {', '.join(needed)}"
    if (
        not DEBIAN_PYTHON.exists()
        or subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True).returncode
    ):
        pytest.skip(
            f"{DEBIAN_PYTHON} lacks what the image installs: apt-get install "
            + shell_variable("RUNTIME_PACKAGES")
            + " "
            + shell_variable("BUILD_PACKAGES")
        )
    work = tmp_path_factory.mktemp("docker")
    source = work / "usr-src-iskra-me162"
    inside = "/usr/src/iskra-me162/"
    for sources, destination in copy_lines():
        if not destination.startswith(inside):
            continue  # copied after the install step (the example config)
        target = source / destination.removeprefix(inside)
        for item in map(ROOT.joinpath, sources):
            # COPY semantics: into a destination ending in "/", else as the destination.
            where = target / item.name if destination.endswith("/") else target
            where.parent.mkdir(parents=True, exist_ok=True)
            if item.is_dir():
                shutil.copytree(item, where, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(item, where)
    (run,) = [arguments for arguments in instruction("RUN") if "install.sh" in arguments]
    assert run.startswith("sh /usr/src/iskra-me162/docker/install.sh image /usr/src/iskra-me162")
    prefix = work / "opt-iskra-me162"
    script = source / "docker" / "install.sh"
    result = subprocess.run(
        ["sh", str(script), "package", str(source), str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield prefix


def test_installed_command_runs_with_debians_packages(installed):
    version = re.search(r'^VERSION = "([^"]+)"', (ROOT / "setup.py").read_text(), re.M)
    assert version
    result = subprocess.run(
        [installed / "bin" / "iskra-me162", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert result.returncode == 0, result.stderr
    assert version.group(1) in result.stdout + result.stderr
    where = subprocess.run(
        [
            installed / "bin" / "python",
            "-c",
            "import serial, iskra_me162.sinks.http as h; print(serial.__file__); print(h.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed,  # not this checkout, which "python -c" would put first on sys.path
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert where[0].startswith("/usr/lib/python3/dist-packages/")  # Debian's, not PyPI's
    assert where[1].startswith(str(installed))  # our package, installed (not this checkout)


def test_installed_command_checks_the_container_config(installed):
    result = subprocess.run(
        [installed / "bin" / "iskra-me162", "--check-config", "--config", str(CONTAINER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_shows_two_meters_as_two_commented_services():
    """Uncommented, the two example services are the first one's container with each its own
    IR head, configuration file, host port and container name (issue 14)."""
    services = compose_services(two_meters=True)
    assert list(services) == ["grid", "heatpump"]
    single = compose_service()
    per_meter = ("container_name", "devices", "ports", "volumes")
    seen: dict[str, set] = {key: set() for key in per_meter}
    for service in services.values():
        assert {k: v for k, v in service.items() if k not in per_meter} == {
            k: v for k, v in single.items() if k not in per_meter
        }
        (device,) = service["devices"]
        host, container = device.split(":")
        assert host.startswith("/dev/serial/by-id/") and container == "/dev/ttyUSB0"
        (port,) = service["ports"]
        assert port.endswith(":8080")
        (volume,) = service["volumes"]
        assert volume.split(":")[1:] == [CONFIG_PATH, "ro"]
        for key in per_meter:
            seen[key].add(str(service[key]))
    assert all(len(values) == 2 for values in seen.values()), seen
