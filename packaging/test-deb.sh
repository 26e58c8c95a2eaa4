#!/usr/bin/env bash
# Build the Debian package from this checkout, lint it, install it, check it, purge it.
#
#   packaging/test-deb.sh [--install-deps] [--if-possible] [--replace-installed]
#
#   --install-deps       apt-get the build dependencies (from debian/control), lintian, man-db
#   --if-possible        when not root on Debian with dpkg and apt-get: say why and exit 0
#   --replace-installed  go ahead even though iskra-me162 is installed and was not installed by
#                        this script (its configuration is purged at the end!)
#
# Needs root on Debian 12 (bookworm). Runs without a terminal (CI=true, no stdin) and can run
# again right after itself. The package is built in a copy of the tree (tracked and untracked
# files, minus what .gitignore excludes), so the checkout is left exactly as it was; the .deb is
# kept in $ISKRA_DEB_OUT (default /tmp/iskra-me162-deb). The last line is
# "test-deb: N passed, M failed".
#
# There is no systemd as PID 1 in a build container: the unit is checked with systemd-analyze
# (verify, offline security) and the daemon's side of Type=notify with packaging/notify-probe.py.
# The sh -c '...' checks below expand their arguments inside the child shell, on purpose.
# shellcheck disable=SC2016
set -euo pipefail

PACKAGE=iskra-me162
MAX_EXPOSURE=2.5
INSTANCE=heatpump # an instance of the template unit iskra-me162@.service
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${ISKRA_DEB_OUT:-/tmp/iskra-me162-deb}
MARKER=/var/lib/iskra-me162-test-deb.installed
# Debian's tools with Debian's python3: pyenv, a virtualenv or ~/.local must not come first, or
# pybuild builds with (and dh_python3 computes dependencies for) the wrong interpreter.
CLEAN_PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive

install_deps=0
if_possible=0
replace_installed=0
for arg in "$@"; do
    case "$arg" in
        --install-deps) install_deps=1 ;;
        --if-possible) if_possible=1 ;;
        --replace-installed) replace_installed=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-deb: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

unsupported() {
    if [ "$if_possible" = 1 ]; then
        echo "test-deb: SKIPPED: $1"
        exit 0
    fi
    echo "test-deb: $1" >&2
    exit 2
}
[ "$(id -u)" = 0 ] || unsupported "the package test needs root (it installs and purges the package)"
if ! { [ -r /etc/debian_version ] && command -v dpkg >/dev/null && command -v apt-get >/dev/null; }; then
    unsupported "the package test needs Debian (dpkg and apt-get)"
fi

# --- bookkeeping ---------------------------------------------------------------------------------
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
# check DESCRIPTION COMMAND...: run it quietly, show its output only when it fails.
check() {
    local what=$1 output
    shift
    if output=$("$@" 2>&1); then
        ok "$what"
    else
        fail "$what"
        printf '%s\n' "$output" | sed 's/^/    /'
    fi
}
summary() { echo "test-deb: $passed passed, $failed failed"; }
abort() {
    fail "$1"
    summary
    exit 1
}
run_clean() { env -i PATH="$CLEAN_PATH" HOME="$WORK/home" LC_ALL=C.UTF-8 "$@"; }
is_installed() { dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q ' installed$'; }
has_package_state() { dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -qv 'not-installed$'; }

WORK=$(mktemp -d /tmp/iskra-me162-test-deb.XXXXXX)
chmod 0755 "$WORK" # apt's _apt user and lintian (run as nobody) must read what is in it
mkdir "$WORK/home"
instance_made=0 # 1 while this script's instance config and runtime directory exist
cleanup() {
    rm -rf "$WORK"
    if [ "$instance_made" = 1 ]; then rm -rf "/etc/default/iskra-me162-$INSTANCE" "/run/iskra-me162-$INSTANCE"; fi
}
trap cleanup EXIT

# --- the machine ---------------------------------------------------------------------------------
if has_package_state; then
    if [ -e "$MARKER" ] || [ "$replace_installed" = 1 ]; then
        echo "# purging $PACKAGE left installed by an earlier run"
        apt-get purge -y -q "$PACKAGE" >"$WORK/purge-old.log" 2>&1 || {
            cat "$WORK/purge-old.log"
            abort "purge the $PACKAGE package left by an earlier run"
        }
    else
        echo "test-deb: $PACKAGE is installed on this machine and this script did not install it." >&2
        echo "test-deb: the test purges it, with /etc/default/$PACKAGE; pass --replace-installed" >&2
        echo "test-deb: if that is what you want." >&2
        exit 2
    fi
fi
rm -f "$MARKER"

# Build output must land in $WORK only: remember the checkout's state, ignored files included,
# and what is beside it (where dpkg-buildpackage would put its results).
repo_state() {
    git -C "$REPO" status --porcelain --ignored 2>/dev/null || true
    local beside
    for beside in "$REPO"/../"${PACKAGE}"_*; do
        [ -e "$beside" ] && echo "beside the checkout: $beside"
    done
    return 0
}
repo_status_before=$(repo_state)

# --- a copy of the tree to build in ----------------------------------------------------------------
SRC="$WORK/$PACKAGE"
mkdir "$SRC"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked files as they are in the work tree, without ignored build output.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi # skip deleted files
        done \
        | tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
    tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=.pybuild -cf - . | tar -xf - -C "$SRC"
fi

if [ "$install_deps" = 1 ]; then
    echo "# installing the build dependencies (debian/control), lintian and man-db"
    apt-get update -q >"$WORK/apt-update.log" 2>&1 || { cat "$WORK/apt-update.log"; abort "apt-get update"; }
    apt-get build-dep -y -q "$SRC" >"$WORK/build-dep.log" 2>&1 \
        || { cat "$WORK/build-dep.log"; abort "apt-get build-dep (debian/control)"; }
    apt-get install -y -q --no-install-recommends lintian man-db systemd util-linux \
        >"$WORK/tools.log" 2>&1 || { cat "$WORK/tools.log"; abort "apt-get install lintian man-db systemd"; }
fi
for tool in dpkg-buildpackage dpkg-parsechangelog lintian systemd-analyze man setpriv; do
    command -v "$tool" >/dev/null || abort "$tool is missing: run with --install-deps"
done

# --- static checks ---------------------------------------------------------------------------------
VERSION=$(cd "$SRC" && run_clean dpkg-parsechangelog -S Version)
check "versions agree: setup.py, debian/changelog ($VERSION), man pages; man pages match the code" \
    run_clean python3 "$SRC/packaging/check-docs.py" "$SRC"
for page in "$SRC"/docs/iskra-me162.[58]; do
    check "man --warnings is silent on $(basename "$page")" \
        sh -c '! LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$1" 2>&1 >/dev/null | grep .' _ "$page"
done

# --- build -----------------------------------------------------------------------------------------
echo "# building with: dpkg-buildpackage -us -uc -b (PATH=$CLEAN_PATH)"
if ! (cd "$SRC" && run_clean dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log"
    abort "dpkg-buildpackage -us -uc -b"
fi
DEB="$WORK/${PACKAGE}_${VERSION}_all.deb"
[ -f "$DEB" ] || abort "the build made ${PACKAGE}_${VERSION}_all.deb"
ok "dpkg-buildpackage -us -uc -b made $(basename "$DEB")"
rm -rf "$OUT"
mkdir -p "$OUT"
chmod 0755 "$OUT"
cp "$DEB" "$OUT/"
DEB="$OUT/$(basename "$DEB")"
chmod 0644 "$DEB"

# --- lintian ---------------------------------------------------------------------------------------
echo "# lintian $(lintian --print-version) on $(basename "$DEB"):"
# As nobody: lintian needs no privileges and warns when it runs as root. -I shows the
# informational tags too, --show-overrides the overridden ones (as O:); E: and W: lines fail
# the check. (No --fail-on: with --show-overrides it also counts the overridden tags.)
mkdir -m 0700 "$WORK/lintian-home"
chown nobody "$WORK/lintian-home"
set +e
(cd "$OUT" && setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env -i PATH="$CLEAN_PATH" HOME="$WORK/lintian-home" TMPDIR="$WORK/lintian-home" LC_ALL=C.UTF-8 \
    lintian -I --show-overrides "$DEB") >"$WORK/lintian.log" 2>&1
lintian_status=$?
set -e
sed 's/^/    /' "$WORK/lintian.log"
errors=$(grep -c '^E: ' "$WORK/lintian.log" || true)
warnings=$(grep -c '^W: ' "$WORK/lintian.log" || true)
if [ "$lintian_status" = 0 ] && [ "$errors" = 0 ] && [ "$warnings" = 0 ]; then
    ok "lintian: 0 errors, 0 warnings"
else
    fail "lintian: $errors errors, $warnings warnings (exit status $lintian_status)"
fi
check "every lintian override carries a comment with its reason" \
    awk 'NF && !/^#/ { if (prev !~ /^#/) bad = 1 } { prev = $0 } END { exit bad }' \
    "$SRC/debian/$PACKAGE.lintian-overrides"

# --- contents --------------------------------------------------------------------------------------
dpkg-deb -c "$DEB" | awk '{ print $1, $2, $6 }' | sed 's| \./| /|; s|/$||' >"$WORK/contents"
echo "# contents (dpkg-deb -c):"
sed 's/^/    /' "$WORK/contents"
has() { grep -Eq "^$1 [^ ]+ $2\$" "$WORK/contents"; }
UNIT_DIR=$(awk '$3 ~ /\/systemd\/system\/iskra-me162\.service$/ { sub(/\/iskra-me162\.service$/, "", $3); print $3 }' "$WORK/contents")
check "/usr/bin/iskra-me162, executable" has '-rwxr-xr-x' /usr/bin/iskra-me162
check "the module in /usr/lib/python3/dist-packages/iskra_me162" \
    has '-rw-r--r--' /usr/lib/python3/dist-packages/iskra_me162/cli.py
check "its metadata (iskra-me162 --version reads it)" \
    grep -Eq ' /usr/lib/python3/dist-packages/iskra_me162-[^/]*\.(egg|dist)-info$' "$WORK/contents"
check "no tests, no byte code, nothing under /usr/local" \
    sh -c '! grep -E " /usr/lib/python3/dist-packages/tests|__pycache__|\.pyc$| /usr/local" "$1"' _ "$WORK/contents"
check "the unit in debhelper's unit directory ($UNIT_DIR)" \
    test "$UNIT_DIR" = /lib/systemd/system -o "$UNIT_DIR" = /usr/lib/systemd/system
check "the template unit iskra-me162@.service beside it" \
    has '-rw-r--r--' "$UNIT_DIR/iskra-me162@.service"
check "the example config of an instance, /usr/share/doc/iskra-me162/examples/iskra-me162-NAME" \
    has '-rw-r--r--' /usr/share/doc/iskra-me162/examples/iskra-me162-NAME
check "/etc/default/iskra-me162 shipped 0640 (the postinst adds the group)" \
    has '-rw-r-----' /etc/default/iskra-me162
check "/etc/default/iskra-me162 is the only conffile" \
    test "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xOf - ./conffiles)" = /etc/default/iskra-me162
check "the sysusers.d file" has '-rw-r--r--' /usr/lib/sysusers.d/iskra-me162.conf
check "man pages iskra-me162(8) and iskra-me162(5)" sh -c \
    'grep -q " /usr/share/man/man8/iskra-me162.8.gz$" "$1" && grep -q " /usr/share/man/man5/iskra-me162.5.gz$" "$1"' \
    _ "$WORK/contents"
check "README, changelog and copyright in /usr/share/doc/iskra-me162" sh -c \
    'grep -Eq " /usr/share/doc/iskra-me162/README.rst(.gz)?$" "$1" &&
     grep -q " /usr/share/doc/iskra-me162/changelog.gz$" "$1" &&
     grep -q " /usr/share/doc/iskra-me162/copyright$" "$1"' _ "$WORK/contents"
check "the optional udev rule as an example, not active" sh -c \
    'grep -q " /usr/share/doc/iskra-me162/examples/70-iskra-me162-modemmanager.rules$" "$1" &&
     ! grep -q "/udev/rules.d/" "$1"' _ "$WORK/contents"
depends=$(dpkg-deb -f "$DEB" Depends)
echo "# Depends: $depends"
for dependency in python3-serial python3-requests python3-daemon; do
    check "Depends on $dependency" grep -Eq "(^|, )$dependency( |,|$)" <<<"$depends"
done
check "Recommends ca-certificates (TLS to Domoticz or MQTT with a public CA)" \
    sh -c 'dpkg-deb -f "$1" Recommends | grep -q ca-certificates' _ "$DEB"
dpkg-deb -e "$DEB" "$WORK/control"
check "maintainer scripts fetch nothing (no pip, no downloads)" \
    sh -c '! grep -Eqi "pip |curl|wget|https?://" "$1"/postinst "$1"/prerm "$1"/postrm' _ "$WORK/control"
check "postinst creates the user and gives the conffile to its group" \
    grep -q 'chown root:iskra-me162' "$WORK/control/postinst"

# --- install ---------------------------------------------------------------------------------------
echo "# apt-get install $DEB"
touch "$MARKER"
if ! apt-get install -y -q "$DEB" >"$WORK/install.log" 2>&1; then
    cat "$WORK/install.log"
    abort "apt-get install ./$(basename "$DEB")"
fi
ok "apt-get install ./$(basename "$DEB")"
check "the package is installed" is_installed
check "system user iskra-me162: no login shell, home /nonexistent" \
    sh -c 'getent passwd iskra-me162 | grep -Eq "^iskra-me162:x:[0-9]+:[0-9]+:[^:]*:/nonexistent:(/usr/sbin/nologin|/bin/false)$"'
check "iskra-me162 is a system user (uid below 1000)" \
    sh -c '[ "$(id -u iskra-me162)" -lt 1000 ]'
check "iskra-me162 is in group dialout" sh -c 'id -nG iskra-me162 | tr " " "\n" | grep -qx dialout'
check "/etc/default/iskra-me162 is 0640 root:iskra-me162" \
    test "$(stat -c '%a %U:%G' /etc/default/iskra-me162)" = "640 root:iskra-me162"
check "the service is not enabled by the installation (the config must be edited first)" \
    sh -c '[ "$(systemctl is-enabled iskra-me162.service 2>/dev/null)" = disabled ]'
check "/usr/bin/iskra-me162 runs Debian's /usr/bin/python3" \
    sh -c 'head -n1 /usr/bin/iskra-me162 | grep -Eq "^#! ?/usr/bin/python3$"'
check "iskra-me162 --version says $VERSION" \
    test "$(run_clean /usr/bin/iskra-me162 --version)" = "iskra-me162 $VERSION"
check "every module imports with Debian's python3 and python3-serial/-requests/-daemon" \
    run_clean /usr/bin/python3 -I -c '
import importlib, pkgutil, iskra_me162
assert iskra_me162.__file__.startswith("/usr/lib/python3/dist-packages/"), iskra_me162.__file__
for module in pkgutil.walk_packages(iskra_me162.__path__, "iskra_me162."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
'
check "--check-config accepts the shipped file (as root)" run_clean /usr/bin/iskra-me162 --check-config
check "--check-config accepts the shipped file as the service user" \
    setpriv --reuid=iskra-me162 --regid=iskra-me162 --init-groups \
    env -i PATH="$CLEAN_PATH" LC_ALL=C.UTF-8 /usr/bin/iskra-me162 --check-config
set +e
setpriv --reuid=nobody --regid=nogroup --clear-groups env -i PATH="$CLEAN_PATH" LC_ALL=C.UTF-8 \
    /usr/bin/iskra-me162 --check-config >/dev/null 2>"$WORK/nobody.err"
nobody_status=$?
set -e
check "other users cannot read the config: status 78 and a message (got $nobody_status)" \
    sh -c '[ "$1" = 78 ] && grep -q "Permission denied" "$2"' _ "$nobody_status" "$WORK/nobody.err"

# The daemon's side of what the package promises about the config file.
mkdir -m 0755 "$WORK/conf"
cp /etc/default/iskra-me162 "$WORK/conf/secret"
printf '%s\n' 'domoticzserver = "127.0.0.1:8080"' 'device_index = 1' \
    'domoticzusername = "meter"' 'domoticzpassword = "s3cret-Pa55"' >>"$WORK/conf/secret"
chmod 0644 "$WORK/conf/secret"
check "a world-readable config with a password gets a warning (and the password is not shown)" \
    sh -c 'out=$(env -i PATH="$2" /usr/bin/iskra-me162 --check-config --config "$1" 2>&1) &&
           printf "%s" "$out" | grep -q "readable by every user" &&
           ! printf "%s" "$out" | grep -q "s3cret-Pa55"' _ "$WORK/conf/secret" "$CLEAN_PATH"
chmod 0640 "$WORK/conf/secret"
check "no such warning once it is 0640" \
    sh -c '! env -i PATH="$2" /usr/bin/iskra-me162 --check-config --config "$1" 2>&1 | grep -q "readable by every user"' \
    _ "$WORK/conf/secret" "$CLEAN_PATH"
printf '%s\n' 'state_file = "/var/run/me162-state"' >"$WORK/conf/legacy"
check "the old state_file /var/run/me162-state is mapped to /run/iskra-me162/state, with a warning" \
    sh -c 'out=$(env -i PATH="$2" /usr/bin/iskra-me162 --check-config --config "$1" 2>&1) &&
           printf "%s" "$out" | grep -q "state_file = .*/run/iskra-me162/state" &&
           printf "%s" "$out" | grep -qi "warning.*/var/run/me162-state"' _ "$WORK/conf/legacy" "$CLEAN_PATH"

# --- the unit --------------------------------------------------------------------------------------
UNIT="$UNIT_DIR/iskra-me162.service"
check "the installed unit is the one in the repository" cmp "$UNIT" "$REPO/systemd/iskra-me162.service"
check "systemd-analyze verify $UNIT is clean" \
    sh -c 'out=$(systemd-analyze verify "$1" 2>&1); status=$?; printf "%s" "$out"; [ $status = 0 ] && [ -z "$out" ]' _ "$UNIT"
systemd-analyze security --offline=true "$UNIT" >"$WORK/security.log" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for iskra-me162\.service: \([0-9.]*\).*/\1/p' "$WORK/security.log")
echo "# systemd-analyze security --offline=true $UNIT: overall exposure ${exposure:-?}"
grep -E '✗' "$WORK/security.log" | sed 's/^/    /' || true
check "offline security exposure ${exposure:-?} <= $MAX_EXPOSURE" \
    awk -v e="${exposure:-99}" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= max + 0) }'
check "the sandbox keeps the serial devices and IPv4/IPv6" sh -c '
    for line in "DeviceAllow=char-ttyUSB rw" "DeviceAllow=char-ttyACM rw" "DeviceAllow=char-ttyAMA rw" \
                "DeviceAllow=char-ttyS rw" "SupplementaryGroups=dialout"; do
        grep -qx "$line" "$1" || { echo "missing: $line"; exit 1; }
    done
    grep -Eq "^RestrictAddressFamilies=.*AF_INET( |$)" "$1" && grep -Eq "^RestrictAddressFamilies=.*AF_INET6" "$1" \
        || { echo "AF_INET/AF_INET6 not allowed"; exit 1; }
    ! grep -Eq "^(PrivateDevices|PrivateNetwork)=(yes|true|1)" "$1" || { echo "devices or network hidden"; exit 1; }' _ "$UNIT"
check "Type=notify, watchdog, reload by SIGHUP, restart, runtime directory for the state" sh -c '
    for line in "Type=notify" "ExecStart=/usr/bin/iskra-me162" "ExecReload=/bin/kill -HUP \$MAINPID" \
                "User=iskra-me162" "Restart=always" "RuntimeDirectory=iskra-me162" \
                "Wants=network-online.target" "After=network-online.target"; do
        grep -qxF "$line" "$1" || { echo "missing: $line"; exit 1; }
    done
    grep -Eq "^WatchdogSec=[1-9]" "$1" && grep -Eq "^RestartSec=[1-9]" "$1"' _ "$UNIT"

# The daemon's side of Type=notify, as the service user, against the built-in simulated meter.
printf '%s\n' 'port = "sim://me162"' "state_file = \"$WORK/conf/state\"" >"$WORK/conf/notify"
chmod 0644 "$WORK/conf/notify"
chown iskra-me162 "$WORK/conf"
echo "# the daemon under a notify socket, as user iskra-me162 (packaging/notify-probe.py):"
if run_clean /usr/bin/python3 "$SRC/packaging/notify-probe.py" iskra-me162 \
    /usr/bin/iskra-me162 --config "$WORK/conf/notify" >"$WORK/notify.log" 2>&1; then
    sed 's/^/    /' "$WORK/notify.log"
    ok "Type=notify contract: READY, STATUS, WATCHDOG, reload, stop"
else
    sed 's/^/    /' "$WORK/notify.log"
    fail "Type=notify contract: READY, STATUS, WATCHDOG, reload, stop"
fi
chown root "$WORK/conf"

# --- an instance of the template unit --------------------------------------------------------------
TEMPLATE="$UNIT_DIR/iskra-me162@.service"
INSTANCE_UNIT="$UNIT_DIR/iskra-me162@$INSTANCE.service" # no such file: systemd-analyze instantiates
INSTANCE_CONFIG="/etc/default/iskra-me162-$INSTANCE"
INSTANCE_RUN="/run/iskra-me162-$INSTANCE"
check "the installed template unit is the one in the repository" \
    cmp "$TEMPLATE" "$REPO/systemd/iskra-me162@.service"
check "systemd-analyze verify iskra-me162@$INSTANCE.service is clean" \
    sh -c 'out=$(systemd-analyze verify "$1" 2>&1); status=$?; printf "%s" "$out"; [ $status = 0 ] && [ -z "$out" ]' \
    _ "$INSTANCE_UNIT"
systemd-analyze security --offline=true "$INSTANCE_UNIT" >"$WORK/security-instance.log" 2>&1 || true
exposure=$(sed -n "s/.*Overall exposure level for iskra-me162@$INSTANCE\.service: \([0-9.]*\).*/\1/p" \
    "$WORK/security-instance.log")
echo "# systemd-analyze security --offline=true $INSTANCE_UNIT: overall exposure ${exposure:-?}"
grep -E '✗' "$WORK/security-instance.log" | sed 's/^/    /' || true
check "instance: offline security exposure ${exposure:-?} <= $MAX_EXPOSURE" \
    awk -v e="${exposure:-99}" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= max + 0) }'
check "instance: the plain unit's sandbox and watchdog, its own config, runtime directory, state file" sh -c '
    strip() { grep -Ev "^(#|$|Description=|ExecStart=|RuntimeDirectory=)" "$1"; }
    strip "$1" >"$3/plain.settings"; strip "$2" >"$3/template.settings"
    diff "$3/plain.settings" "$3/template.settings" || exit 1
    for line in "ExecStart=/usr/bin/iskra-me162 --config /etc/default/iskra-me162-%i --state-file /run/iskra-me162-%i/state" \
                "RuntimeDirectory=iskra-me162-%i"; do
        grep -qxF "$line" "$2" || { echo "missing: $line"; exit 1; }
    done' _ "$UNIT" "$TEMPLATE" "$WORK"

# What the instance's service runs, without systemd: its ExecStart with %i = $INSTANCE, as the
# service user, in the runtime directory systemd would make (RuntimeDirectory=, 0750), with a
# config made from the shipped example as the README says, reading the simulated meter.
instance_cmd=$(sed -n 's/^ExecStart=//p' "$TEMPLATE" | sed "s/%i/$INSTANCE/g")
echo "# instance $INSTANCE runs: $instance_cmd"
set +e
# shellcheck disable=SC2086 # the unit's command line, split into words as systemd does
setpriv --reuid=iskra-me162 --regid=iskra-me162 --init-groups env -i PATH="$CLEAN_PATH" LC_ALL=C.UTF-8 \
    $instance_cmd >/dev/null 2>"$WORK/instance-missing.err"
missing_status=$?
set -e
check "without $INSTANCE_CONFIG the instance stops with status 78 and says why (got $missing_status)" \
    sh -c '[ "$1" = 78 ] && grep -qF "$2: configuration file not found" "$3"' \
    _ "$missing_status" "$INSTANCE_CONFIG" "$WORK/instance-missing.err"
[ ! -e "$INSTANCE_CONFIG" ] || abort "$INSTANCE_CONFIG exists already (not made by this script)"
instance_made=1
install -m 0640 -g iskra-me162 /usr/share/doc/iskra-me162/examples/iskra-me162-NAME "$INSTANCE_CONFIG"
check "--check-config accepts the example of an instance as the service user" \
    setpriv --reuid=iskra-me162 --regid=iskra-me162 --init-groups \
    env -i PATH="$CLEAN_PATH" LC_ALL=C.UTF-8 /usr/bin/iskra-me162 --check-config --config "$INSTANCE_CONFIG"
sed -i 's|^port = .*|port = "sim://me162"|' "$INSTANCE_CONFIG"
# A copy of the plain unit's file names the plain unit's state file: --state-file wins.
echo 'state_file = "/run/iskra-me162/state"' >>"$INSTANCE_CONFIG"
rm -rf "$INSTANCE_RUN"
install -d -m 0750 -o iskra-me162 -g iskra-me162 "$INSTANCE_RUN"
plain_state_before=$(ls -l /run/iskra-me162/state 2>&1 || true)
echo "# instance $INSTANCE under a notify socket, as user iskra-me162 (packaging/notify-probe.py):"
# shellcheck disable=SC2086
if run_clean /usr/bin/python3 "$SRC/packaging/notify-probe.py" iskra-me162 $instance_cmd \
    >"$WORK/notify-instance.log" 2>&1; then
    sed 's/^/    /' "$WORK/notify-instance.log"
    ok "instance: Type=notify contract: READY, STATUS, WATCHDOG, reload, stop"
else
    sed 's/^/    /' "$WORK/notify-instance.log"
    fail "instance: Type=notify contract: READY, STATUS, WATCHDOG, reload, stop"
fi
check "instance: its state file $INSTANCE_RUN/state, written by iskra-me162" \
    sh -c '[ -s "$1/state" ] && [ "$(stat -c %U "$1/state")" = iskra-me162 ]' _ "$INSTANCE_RUN"
check "instance: not the plain unit's state file (its config's state_file is overridden)" \
    test "$(ls -l /run/iskra-me162/state 2>&1 || true)" = "$plain_state_before"
rm -rf "$INSTANCE_RUN" "$INSTANCE_CONFIG"
instance_made=0

# --- upgrades keep the administrator's edits -------------------------------------------------------
# A second build whose only changes are a newer version and a changed default config file.
NEXT="${VERSION}+upgradetest1"
{
    printf '%s (%s) bookworm; urgency=medium\n\n  * Upgrade test build (packaging/test-deb.sh).\n\n' "$PACKAGE" "$NEXT"
    printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Maintainer)" "$(date -R)"
    cat "$SRC/debian/changelog"
} >"$WORK/changelog.next"
cp "$WORK/changelog.next" "$SRC/debian/changelog"
echo "# upgrade-test build: changed in version $NEXT" >>"$SRC/etc/default/iskra-me162"
if (cd "$SRC" && run_clean dpkg-buildpackage -us -uc -b -d) >"$WORK/build-next.log" 2>&1; then
    DEB_NEXT="$WORK/${PACKAGE}_${NEXT}_all.deb"
    chmod 0644 "$DEB_NEXT"
    if apt-get install -y -q "$DEB_NEXT" >"$WORK/upgrade.log" 2>&1; then
        ok "upgrade to $NEXT"
        check "an unedited config file is replaced by the new default" \
            grep -q "changed in version $NEXT" /etc/default/iskra-me162
        check "... and is 0640 root:iskra-me162 again" \
            test "$(stat -c '%a %U:%G' /etc/default/iskra-me162)" = "640 root:iskra-me162"
        echo 'update_interval = 120  # edited by test-deb' >>/etc/default/iskra-me162
        if apt-get install -y -q --reinstall "$DEB_NEXT" >"$WORK/reinstall.log" 2>&1; then
            check "an edited config file is kept by a reinstall/upgrade" \
                grep -q "edited by test-deb" /etc/default/iskra-me162
            check "... with its mode and owner" \
                test "$(stat -c '%a %U:%G' /etc/default/iskra-me162)" = "640 root:iskra-me162"
        else
            cat "$WORK/reinstall.log"
            fail "apt-get install --reinstall $(basename "$DEB_NEXT")"
        fi
    else
        cat "$WORK/upgrade.log"
        fail "upgrade to $NEXT"
    fi
else
    tail -n 40 "$WORK/build-next.log"
    fail "build $NEXT for the upgrade test"
fi

# --- purge -----------------------------------------------------------------------------------------
if apt-get purge -y -q "$PACKAGE" >"$WORK/purge.log" 2>&1; then
    ok "apt-get purge $PACKAGE"
else
    cat "$WORK/purge.log"
    fail "apt-get purge $PACKAGE"
fi
rm -f "$MARKER"
package_gone() { ! has_package_state; }
check "the package is gone, with its configuration" package_gone
check "/etc/default/iskra-me162 is gone (and no .dpkg-* copies)" \
    sh -c '! ls -d /etc/default/iskra-me162* 2>/dev/null | grep -q .'
check "the program, the module and the units are gone" sh -c \
    '[ ! -e /usr/bin/iskra-me162 ] && [ ! -e /usr/lib/python3/dist-packages/iskra_me162 ] && [ ! -e "$1" ] &&
     [ ! -e "$2" ]' _ "$UNIT" "$TEMPLATE"
check "the system user stays after purge (files and logs may still name its uid)" getent passwd iskra-me162

# --- the checkout ----------------------------------------------------------------------------------
repo_status_after=$(repo_state)
# Lines that build output would make: ignored files (.pybuild/, debian/iskra-me162/, *.egg-info,
# ...), anything in debian/, anything beside the checkout. Other changes are reported, but do
# not fail the test: in a shared work tree they are other people's edits made meanwhile (this
# script writes only to $WORK, $OUT and the installed system).
build_lines() { grep -E '^!! |^.. "?debian/|^beside the checkout' || true; }
if [ "$(build_lines <<<"$repo_status_before")" = "$(build_lines <<<"$repo_status_after")" ]; then
    ok "no build output in or beside the checkout (git status --ignored)"
else
    fail "no build output in or beside the checkout (git status --ignored)"
    diff <(build_lines <<<"$repo_status_before") <(build_lines <<<"$repo_status_after") | sed 's/^/    /' || true
fi
if [ "$repo_status_before" != "$repo_status_after" ]; then
    echo "# note: other files of the checkout changed during the test (not by this script?):"
    diff <(printf '%s\n' "$repo_status_before") <(printf '%s\n' "$repo_status_after") | sed 's/^/    /' || true
fi
echo "# the package: $DEB"
summary
[ "$failed" = 0 ]
