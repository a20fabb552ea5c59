#!/usr/bin/env bash
# The long crash test: bulwark killed with SIGKILL at seeded moments against `bulwark sim` with
# faults on, then `bulwark verify` (tests/crash.rs; CI runs the same test with 5 kills).
#   scripts/crash-test.sh [--kills N] [--users N] [--seed N] [--summary PATH]
# Writes the run's summary (the kill schedule, what the simulator and the database saw, and
# verify's verdict per invariant) to docs/CRASH-TEST.md unless --summary says otherwise, and
# exits non-zero if any invariant broke. Replay a failure with the seed it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

kills=100
users=8
seed=20261122
summary=docs/CRASH-TEST.md
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --summary) summary="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "crash-test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for value in "$kills" "$users" "$seed"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "crash-test.sh: $value is not a number" >&2; exit 2; }
done

# What is built and tested: the commit now, and whether the work tree differs from it.
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null | grep -v ' docs/CRASH-TEST.md$' || true)" ]; then
  commit="$commit with uncommitted changes"
fi
output=$(mktemp)
trap 'rm -f "$output"' EXIT
status=0
BULWARK_CRASH_KILLS="$kills" BULWARK_CRASH_USERS="$users" BULWARK_CRASH_SEED="$seed" \
  cargo test --locked --test crash -- --nocapture 2>&1 | tee "$output" || status=$?

if grep -q CRASH-TEST-SUMMARY-BEGIN "$output"; then
  mkdir -p "$(dirname "$summary")"
  {
    echo "# Crash test"
    echo
    echo "\`scripts/crash-test.sh --kills $kills --users $users --seed $seed\` on $(nproc) cores,"
    echo "commit $commit, $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Result: $([ "$status" -eq 0 ] && echo 'passed' || echo "FAILED (exit $status)")."
    echo
    echo "bulwark trades against \`bulwark sim\` with faults on (5xx, executed-but-503-unknown, hangs,"
    echo "lost responses, 429 bursts) and is killed with SIGKILL at seeded moments (during start-up, at"
    echo "random, or the instant an order request reaches the exchange), restarted each time; then the"
    echo "faults stop, one clean run stops in order, \`bulwark reconcile\` settles what was in flight,"
    echo "and \`bulwark verify\` checks every invariant (see tests/crash.rs)."
    echo
    sed -n '/CRASH-TEST-SUMMARY-BEGIN/,/CRASH-TEST-SUMMARY-END/p' "$output" | sed '1d;$d'
  } >"$summary"
  echo "crash-test.sh: summary written to $summary"
fi
exit "$status"
