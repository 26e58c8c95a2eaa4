#!/usr/bin/env bash
# Run the atheris harnesses, each for SECONDS, seeded from ../shared/testdata, the simulator and
# a config corpus (fuzz/seeds.py). Exits non-zero when any harness found a crash, a hang
# (one input taking over 10 s) or a broken property; the input that did it is kept and printed.
#
#   fuzz/run.sh SECONDS [iec62056_21|sml|config ...]      (default: all three, one after another)
#
# FUZZ_WORK=DIR keeps corpus, logs and crash inputs in DIR (default: a temporary directory,
# removed afterwards unless something was found). Needs atheris in .venv (pip install atheris).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz/run.sh SECONDS [iec62056_21|sml|config ...]}
shift
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(iec62056_21 sml config)
python=${PYTHON:-.venv/bin/python}
if ! "$python" -c 'import atheris' 2>/dev/null; then
    echo "fuzz: atheris is not installed in $python (.venv/bin/python -m pip install atheris)" >&2
    exit 2
fi

keep=false
if [ -n "${FUZZ_WORK:-}" ]; then work=$FUZZ_WORK; keep=true; else work=$(mktemp -d); fi
mkdir -p "$work/artifacts"
status=0
for name in "${harnesses[@]}"; do
    corpus=$work/corpus/$name
    log=$work/$name.log
    "$python" fuzz/seeds.py "$name" "$corpus"
    started=$(date +%s)
    # The corpus directory is ours (never the shared test data: libFuzzer writes new inputs
    # into the first directory it is given).
    if "$python" "fuzz/fuzz_$name.py" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$name-" "$corpus" >"$log" 2>&1; then
        result=ok
    else
        result=FOUND
        status=1
        keep=true
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz $name: $result, ${runs:-?} executions in $(($(date +%s) - started)) s," \
        "corpus $(find "$corpus" -type f | wc -l) inputs"
    if [ "$result" = FOUND ]; then
        grep -E "^(==|Traceback|  File|[A-Za-z]*Error|AssertionError|SUMMARY)" "$log" | head -40 || true
        find "$work/artifacts" -type f -name "$name-*" | sed "s|^|fuzz: input kept: |"
    fi
done
if $keep; then echo "fuzz: logs and corpus in $work"; else rm -rf "$work"; fi
exit $status
