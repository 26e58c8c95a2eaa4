"""Podman standing in for Docker: builds the Dockerfile unchanged and runs the image, offline.

:meth:`Podman.start` gives a podman with its own configuration and image storage in a directory
of the test's (nothing of the machine's podman set-up is used or changed), or skips the test with
the reason. :meth:`Podman.make_base_image` makes the Dockerfile's ``FROM debian:bookworm-slim``
locally: ``debootstrap --variant=minbase bookworm`` from the Debian archive that the machine's
apt already uses (read from apt at run time, so no host name is written here), imported under
Docker Hub's name for it, so that ``FROM`` resolves without a registry. :meth:`Podman.build`
builds with ``--format docker``: the default OCI image format has no HEALTHCHECK and podman
drops it with no more than a warning.

What this sandbox needs of podman 4.3 (harmless elsewhere):

* ``runtime = "runc"``: in this sandbox podman needs runc rather than crun, which Debian's
  podman prefers when both are installed.
* ``default_ulimits``: podman gives root's containers RLIMIT_NOFILE and RLIMIT_NPROC of 1048576;
  where the sandbox allows less, runc fails with "error setting rlimit type 7: operation not
  permitted". The containers get at most 4096 of each (the daemon uses a few dozen files).

Podman's health-check timers need systemd as PID 1; without it podman logs "unable to get
systemd connection to add healthchecks" and runs the check only when asked
(``podman healthcheck run``), which is what the tests do.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# Debian packages (bookworm): podman and what it runs (runc, conmon come with it), its
# ``--init`` (catatonit, as Docker's init: true uses tini), bridge networking for published
# ports, and debootstrap for the base image. scripts/bootstrap --test installs them.
PACKAGES = ("podman", "runc", "catatonit", "containernetworking-plugins", "iptables", "debootstrap")
_TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "/usr/libexec/podman/catatonit": "catatonit",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "debootstrap": "debootstrap",
}
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # what FROM debian:bookworm-slim means
SUITE = "bookworm"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_MOST_LIMIT = 4096


def _missing_packages() -> list[str]:
    missing = []
    for tool, package in _TOOLS.items():
        if tool.startswith("/"):
            found = os.path.exists(tool)
        else:
            found = shutil.which(tool, path=_SEARCH_PATH) is not None
        if not found and package not in missing:
            missing.append(package)
    return missing


def _limit(kind: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return _MOST_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _MOST_LIMIT)


def debian_mirror() -> str:
    """The Debian archive (``http://.../debian/``) apt uses for bookworm on this machine."""
    command = [
        "apt-get", "indextargets", "--format", "$(REPO_URI)",
        f"Codename: {SUITE}", "Label: Debian", "Created-By: Packages",
    ]  # fmt: skip
    for attempt in range(2):
        found = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        mirrors = sorted(set(found.stdout.split()))
        if mirrors:
            return mirrors[0]
        if attempt == 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
    raise AssertionError(
        f"apt knows no Debian archive for {SUITE} (apt-get indextargets printed nothing); "
        "debootstrap needs one"
    )


@dataclass
class Podman:
    home: Path  # configuration, storage and scratch files; removed by close()

    @classmethod
    def start(cls, home: Path) -> Podman:
        if os.geteuid() != 0:
            pytest.skip(
                "the container image test runs podman as root (rootless podman would need "
                "subordinate uid ranges and user namespaces); run it as root"
            )
        missing = _missing_packages()
        if missing:
            pytest.skip(
                f"the container image test needs {', '.join(missing)}: scripts/bootstrap --test "
                f"installs them (apt-get install {' '.join(PACKAGES)})"
            )
        nofile, nproc = _limit(resource.RLIMIT_NOFILE), _limit(resource.RLIMIT_NPROC)
        (home / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n',
            encoding="utf-8",
        )
        (home / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{home / "storage"}"\n'
            f'runroot = "{home / "run"}"\n',
            encoding="utf-8",
        )
        return cls(home)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
        }

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}"
                f"{result.stderr}"
            )
        return result

    def make_base_image(self) -> None:
        rootfs = self.home / "rootfs"
        mirror = debian_mirror()
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = rootfs / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else result.stderr
            raise AssertionError(f"debootstrap from {mirror} failed:\n{result.stdout}{detail}")
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["podman", "import", "-", BASE_IMAGE],
                stdin=tar.stdout, env=self.env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        assert tar.returncode == 0 and imported.returncode == 0, imported.stderr
        shutil.rmtree(rootfs)

    def build(self, context: Path, tag: str) -> None:
        """The Dockerfile in ``context``, unchanged, as ``docker build`` would build it."""
        self("build", "--pull=never", "--format", "docker", "--tag", tag, str(context),
             timeout=1800)  # fmt: skip

    def inspect(self, what: str) -> dict:
        (found,) = json.loads(self("inspect", what).stdout)
        return found

    def close(self) -> None:
        """Remove every container and image, then the storage (all of it private)."""
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("system", "reset", "--force", check=False, timeout=300)
        shutil.rmtree(self.home, ignore_errors=True)
