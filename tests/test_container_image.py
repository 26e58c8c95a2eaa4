"""The container image built from the Dockerfile, unchanged, and run as docker-compose.yml runs it.

There is no Docker engine here; podman builds and runs the same Dockerfile (``tests/podman.py``:
a private podman, a local ``debian:bookworm-slim`` made with debootstrap from the machine's own
Debian archive, ``--format docker`` so that the HEALTHCHECK is kept). Each container gets the
options of a compose service, translated one by one by :func:`run_arguments` (every key of the
service is either translated or named in ``NOT_TRANSLATED`` with the reason), and reads the
built-in simulator (``sim://me162``), with values set per meter so that what the endpoint serves
can be checked exactly.

Checked: the image's user and HEALTHCHECK; the endpoint serves the meter's readings; the
HEALTHCHECK command passes with fresh readings and fails without; the daemon runs as uid 10162
with no capabilities and no_new_privs; the state file is written into the tmpfs (not the
container's file system); ``podman stop`` ends it with exit status 0 within a few seconds; the
two-meter example of docker-compose.yml runs two containers that read two meters. About two
minutes, most of it debootstrap and the build.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import free_port
from tests.compose import SINGLE_SERVICE, compose_services, expand
from tests.podman import Podman
from tests.test_daemon_sml_e2e import get
from tests.test_docker_files import healthcheck_of_dockerfile

ROOT = Path(__file__).resolve().parent.parent
CONTAINER_CONFIG = ROOT / "docker" / "iskra-me162.conf"
README = ROOT / "README.rst"
IMAGE = "localhost/iskra-me162:test"
SERVICE_UID = 10162
STATE_DIR = "/run/iskra-me162"
STOP_WITHIN_S = 5.0
# Compose keys the test does not pass to podman, and why.
NOT_TRANSLATED = {
    "build": "the fixture builds the image",
    "image": "the image the fixture built",
    "container_name": "each test names its containers",
    "restart": "no restart in a test (podman's restart policies need systemd)",
    "healthcheck": "the image's own HEALTHCHECK runs (test_docker_files: compose's is the same)",
    "logging": "podman's own log driver (compose's json-file is Docker's)",
    "devices": "the simulator needs no device (as a networked head, README 'Docker')",
}
# The meters: the simulator with fixed counters (no load, so they stay put), and the figures
# the endpoint must then serve.
METERS = {
    "grid": {"serial": "81234567", "import_wh": "4000123,2000456", "export_wh": "789000,0"},
    "heatpump": {"serial": "91234568", "import_wh": "1500001,500002", "export_wh": "0,0"},
}


def podman_tmpfs(entry: str) -> str:
    """A compose tmpfs entry as podman 4.3 takes it: it rejects ``uid=``/``gid=`` (Docker takes
    them) and has ``U`` instead: the tmpfs is owned by the container's user (README, Podman)."""
    target, _, options = entry.partition(":")
    kept = [option for option in options.split(",") if not option.startswith(("uid=", "gid="))]
    if len(kept) < len(options.split(",")):
        kept.append("U")
    return f"{target}:{','.join(kept)}"


def run_arguments(service: dict, *, name: str, config: Path, host_port: int) -> list[str]:
    """``podman run`` options for a compose service, the config file and the host port ours."""
    unknown = set(service) - NOT_TRANSLATED.keys() - {
        "init", "user", "group_add", "tmpfs", "cap_drop", "security_opt", "ports", "volumes",
    }  # fmt: skip
    assert not unknown, f"docker-compose.yml has keys this test does not translate: {unknown}"
    arguments = ["run", "--detach", "--name", name]
    if service.get("init"):
        arguments.append("--init")
    arguments += ["--user", service["user"]]
    for group in service.get("group_add", []):
        arguments += ["--group-add", expand(group)]
    for entry in service["tmpfs"]:
        arguments += ["--tmpfs", podman_tmpfs(entry)]
    for capability in service["cap_drop"]:
        arguments += ["--cap-drop", capability]
    for option in service["security_opt"]:
        arguments += ["--security-opt", option]
    (port,) = service["ports"]
    arguments += ["--publish", f"127.0.0.1:{host_port}:{expand(port).rsplit(':', 1)[1]}"]
    (volume,) = service["volumes"]
    _, target, mode = expand(volume).split(":")
    arguments += ["--volume", f"{config}:{target}:{mode}"]
    return [*arguments, IMAGE]


def meter_config(directory: Path, meter: dict[str, str], **faults: str) -> Path:
    """docker/iskra-me162.conf with only the port changed: the simulator with these values."""
    query = "&".join(f"{key}={value}" for key, value in {**meter, "power": "0", **faults}.items())
    lines = CONTAINER_CONFIG.read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("port = ") for line in lines) == 1
    text = "\n".join(f'port = "sim://me162?{query}"' if line.startswith("port = ") else line
                     for line in lines)  # fmt: skip
    path = directory / f"{meter['serial']}.conf"
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o644)  # the container's user must read it (docker/iskra-me162.conf says so)
    return path


def expected_kwh(wh_list: str) -> float:
    return round(sum(int(part) for part in wh_list.split(",")) / 1000, 3)


def duration_ns(text: str) -> int:
    """A Dockerfile duration (``60s``, ``3m``) in nanoseconds, as the image records it."""
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]] * 10**9


def get_readings(port: int) -> dict | None:
    """The endpoint's readings, or None while it has none (503) or does not answer."""
    try:
        status, body = get(port, "/api/v1/readings")
    except OSError:
        return None
    return body if status == 200 else None


def wait_for_readings(podman: Podman, name: str, port: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readings = get_readings(port)
        if readings is not None:
            return readings
        time.sleep(0.5)
    logs = podman("logs", name, check=False)
    raise AssertionError(f"{name}: no readings on port {port} in {timeout} s:\n{logs.stderr}")


def daemon_status(podman: Podman, name: str) -> dict[str, str]:
    """/proc/PID/status of the daemon: the child of the container's init (PID 1)."""
    init_pid = podman.inspect(name)["State"]["Pid"]
    (child,) = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
    fields = (line.split(":", 1) for line in Path(f"/proc/{child}/status").read_text().splitlines())
    return {key: value.strip() for key, value in fields}


def stop(podman: Podman, name: str) -> tuple[float, int]:
    """``podman stop`` (SIGTERM, SIGKILL after 10 s): seconds taken and the exit status."""
    started = time.monotonic()
    podman("stop", "--time", "10", name)
    return time.monotonic() - started, podman.inspect(name)["State"]["ExitCode"]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    engine = Podman.start(tmp_path_factory.mktemp("podman"))
    try:
        engine.make_base_image()
        engine.build(ROOT, IMAGE)
        yield engine
    finally:
        engine.close()


def test_image_keeps_its_user_and_healthcheck(podman: Podman):
    image = podman.inspect(IMAGE)
    assert image["Config"]["User"] == "iskra-me162"
    options, command = healthcheck_of_dockerfile()
    assert image["Healthcheck"]["Test"] == ["CMD", *command]  # kept: --format docker
    seconds = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod"}
    for option, key in seconds.items():
        assert image["Healthcheck"][key] == duration_ns(options[option]), option
    assert image["Healthcheck"]["Retries"] == int(options["retries"])


def test_one_meter_as_compose_runs_it(podman: Podman, tmp_path: Path):
    service = compose_services()[SINGLE_SERVICE]
    meter, port, name = METERS["grid"], free_port(), "iskra-single"
    podman(*run_arguments(service, name=name, config=meter_config(tmp_path, meter), host_port=port))

    readings = wait_for_readings(podman, name, port)
    assert readings["meter"]["serial"] == meter["serial"]
    assert readings["import_kwh"] == expected_kwh(meter["import_wh"])
    assert readings["export_kwh"] == expected_kwh(meter["export_wh"])
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    status = daemon_status(podman, name)
    assert status["Uid"].split() == [str(SERVICE_UID)] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"

    mounts = podman("exec", name, "cat", "/proc/mounts").stdout.splitlines()
    assert any(line.split()[1:3] == [STATE_DIR, "tmpfs"] for line in mounts), mounts
    state = json.loads(podman("exec", name, "cat", f"{STATE_DIR}/state").stdout)
    assert state["meter_id"] == meter["serial"]
    owner = podman("exec", name, "stat", "-c", "%u", f"{STATE_DIR}/state").stdout.split()
    assert owner == [str(SERVICE_UID)]
    changed = podman("diff", name).stdout
    assert STATE_DIR not in changed, f"the state file landed in the container's layer:\n{changed}"

    took, exit_status = stop(podman, name)
    assert exit_status == 0, podman("logs", name, check=False).stderr
    assert took < STOP_WITHIN_S
    logs = podman("logs", name).stderr
    assert "Traceback" not in logs and " ERROR " not in logs, logs


def test_healthcheck_fails_while_the_meter_is_silent(podman: Podman, tmp_path: Path):
    service = compose_services()[SINGLE_SERVICE]
    port, name = free_port(), "iskra-silent"
    config = meter_config(tmp_path, METERS["grid"], silent="1")
    podman(*run_arguments(service, name=name, config=config, host_port=port))
    time.sleep(3)  # the daemon is up and trying: the endpoint answers, without a reading
    assert podman.inspect(name)["State"]["Running"]
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode != 0 and "unhealthy" in health.stdout + health.stderr
    took, exit_status = stop(podman, name)
    assert (exit_status, took < STOP_WITHIN_S) == (0, True)


def test_two_meters_in_two_containers(podman: Podman, tmp_path: Path):
    services = compose_services(two_meters=True)
    assert list(services) == list(METERS)
    ports = {}
    for name, service in services.items():
        ports[name] = free_port()
        config = meter_config(tmp_path, METERS[name])
        podman(*run_arguments(service, name=name, config=config, host_port=ports[name]))
    for name, meter in METERS.items():
        readings = wait_for_readings(podman, name, ports[name])
        assert readings["meter"]["serial"] == meter["serial"]
        assert readings["import_kwh"] == expected_kwh(meter["import_wh"])
        state = json.loads(podman("exec", name, "cat", f"{STATE_DIR}/state").stdout)
        assert state["meter_id"] == meter["serial"]  # each its own tmpfs

    took, exit_status = stop(podman, "grid")
    assert (exit_status, took < STOP_WITHIN_S) == (0, True)
    assert get_readings(ports["grid"]) is None
    still = get_readings(ports["heatpump"])
    assert still is not None and still["meter"]["serial"] == METERS["heatpump"]["serial"]
    assert stop(podman, "heatpump")[1] == 0


def test_readme_tells_podman_users_the_tmpfs_line_this_test_uses():
    (entry,) = compose_services()[SINGLE_SERVICE]["tmpfs"]
    assert f'"{podman_tmpfs(entry)}"' in README.read_text(encoding="utf-8")
