#!/bin/sh
# Install iskra-me162 the way the Docker image has it. The Dockerfile runs
#
#     install.sh image SRC           as root in debian:bookworm-slim
#
# which is the steps below in this order. tests/test_docker_files.py runs the "package" step
# outside Docker (the others need root and change the system), so that the commands which build
# and install the package are the ones the image uses.
#
#   system           Debian packages (the same runtime dependencies as the .deb), the service
#                    user iskra-me162 (uid/gid 10162, group dialout), its state directory
#   package SRC DIR  the package from the source tree SRC into a virtual environment DIR that
#                    uses Debian's python3-serial, python3-requests, python3-daemon (no PyPI)
#   finish DIR       the command on PATH; build-only packages and caches removed
set -eu

PREFIX=/opt/iskra-me162
SERVICE_USER=iskra-me162
SERVICE_ID=10162
STATE_DIR=/run/iskra-me162
# What the daemon needs at run time (setup.py's install_requires, from Debian as in the .deb),
# and the public CA certificates for https:// Domoticz or MQTT over TLS with a public CA's
# certificate (python3-requests pulls them in too, but MQTT's TLS uses them directly).
RUNTIME_PACKAGES="python3 python3-serial python3-requests python3-daemon ca-certificates"
# Optional features the image includes (setup.py's extras_require): MQTT.
OPTIONAL_PACKAGES="python3-paho-mqtt"
# What building the package needs; removed again by "finish".
BUILD_PACKAGES="python3-venv python3-setuptools python3-wheel"
PYTHON=${PYTHON:-/usr/bin/python3}

step_system() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086 # word splitting of the package lists is intended
    apt-get install --yes --no-install-recommends $RUNTIME_PACKAGES $OPTIONAL_PACKAGES $BUILD_PACKAGES
    groupadd --system --gid "$SERVICE_ID" "$SERVICE_USER"
    useradd --system --uid "$SERVICE_ID" --gid "$SERVICE_ID" --groups dialout \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SERVICE_USER"
    install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0700 "$STATE_DIR"
}

step_package() {
    src=$1
    prefix=$2
    # --system-site-packages: the runtime dependencies are Debian's, as with the .deb.
    "$PYTHON" -m venv --system-site-packages "$prefix"
    # --no-deps --no-index: nothing from PyPI; --no-build-isolation: build with Debian's
    # setuptools and wheel instead of downloading them.
    "$prefix/bin/python" -m pip install --no-deps --no-index --no-build-isolation \
        --no-cache-dir --disable-pip-version-check --quiet "$src"
    # Fail here, not at the first start, if a runtime dependency is missing.
    "$prefix/bin/python" -c 'import serial, requests, daemon, iskra_me162.cli'
}

step_finish() {
    prefix=$1
    ln -sf "$prefix/bin/iskra-me162" /usr/local/bin/iskra-me162
    "$prefix/bin/python" -m pip uninstall --yes --quiet pip setuptools
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get purge --yes --auto-remove $BUILD_PACKAGES
    rm -rf /var/lib/apt/lists/* /root/.cache
    iskra-me162 --version
}

case "${1:-}" in
    system) step_system ;;
    package) step_package "$2" "${3:-$PREFIX}" ;;
    finish) step_finish "${2:-$PREFIX}" ;;
    image)
        step_system
        step_package "$2" "$PREFIX"
        step_finish "$PREFIX"
        ;;
    *)
        echo "usage: $0 image SRC | system | package SRC [DIR] | finish [DIR]" >&2
        exit 2
        ;;
esac
