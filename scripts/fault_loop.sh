#!/usr/bin/env bash
# The restart and cut-route fault tests, many rounds in a row, beside a CPU hog:
# timing bugs hide on an idle machine. Stops at the first failing round and says which.
#   scripts/fault_loop.sh [ROUNDS] [HOGS]      (make faults ROUNDS=30 HOGS=1)
# FAULTS_K narrows the tests (a pytest -k expression), e.g. FAULTS_K="restarts_need or cut_and"
set -u
cd "$(dirname "$0")/.."
rounds=${1:-30}
hogs=${2:-1}
k=${FAULTS_K:-"restarts_need or cut_and or full_queue or refused_at_its_commit or never_answers"}
py=${PYTHON:-.venv/bin/python}
pids=()
for _ in $(seq 1 "$hogs"); do
    "$py" -c "while True: pass" &
    pids+=($!)
done
trap '[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null' EXIT
for i in $(seq 1 "$rounds"); do
    start=$(date +%s)
    if ! "$py" -m pytest -q -p no:cacheprovider tests/integration/test_faults.py \
        -k "$k" --durations=0 > "fault_loop.$i.log" 2>&1; then
        echo "round $i of $rounds FAILED after $(( $(date +%s) - start ))s: see fault_loop.$i.log"
        exit 1
    fi
    echo "round $i of $rounds passed in $(( $(date +%s) - start ))s: $(tail -n 1 "fault_loop.$i.log")"
    grep -E "^[0-9.]+s call" "fault_loop.$i.log" | sed 's/^/    /'
    rm -f "fault_loop.$i.log"
done
echo "all $rounds rounds passed"
