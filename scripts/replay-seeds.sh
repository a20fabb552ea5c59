#!/usr/bin/env bash
# The determinism sweep: runs the deterministic simulation's replay check (tests/simulation.rs:
# the same seed twice, decisions, faults and orders compared line by line) for many seeds, and
# writes how many were run and which failed to docs/REPLAY-SEEDS.md. Not part of CI (it takes a
# while); CI runs the check for one seed.
#   scripts/replay-seeds.sh [--seeds N] [--first N] [--steps N] [--summary PATH]
# Every guard input must be a function of the venue's time and the market, never of how long a
# request took: a seed that replays differently is a bug; replay it with
#   BULWARK_SIM_SEED=<seed> BULWARK_SIM_DETERMINISM_STEPS=<steps> cargo test --test simulation the_same_seed -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=200
first=1000
steps=800
summary=docs/REPLAY-SEEDS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --first) first="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --summary) summary="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "replay-seeds.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for value in "$seeds" "$first" "$steps"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "replay-seeds.sh: $value is not a number" >&2; exit 2; }
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
git diff --quiet 2>/dev/null || dirty=" (with uncommitted changes)"
echo "== building the simulation test (release)"
binary="$(cargo test --release --locked --test simulation --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "simulation" and m.get("executable"):
        print(m["executable"])')"
[ -x "$binary" ] || { echo "replay-seeds.sh: the simulation test binary was not built" >&2; exit 1; }

started=$(date +%s)
passed=0
failed_seeds=()
last=$((first + seeds - 1))
for seed in $(seq "$first" "$last"); do
  if BULWARK_SIM_SEED="$seed" BULWARK_SIM_DETERMINISM_STEPS="$steps" \
      "$binary" the_same_seed_replays_the_same_decisions_and_orders --exact --quiet > "/tmp/replay-seed-$seed.log" 2>&1; then
    passed=$((passed + 1))
    rm -f "/tmp/replay-seed-$seed.log"
  else
    failed_seeds+=("$seed")
    echo "seed $seed: replayed differently (log: /tmp/replay-seed-$seed.log)"
  fi
  echo "seed $seed done ($passed passed, ${#failed_seeds[@]} failed)"
done
elapsed=$(( $(date +%s) - started ))

{
  echo "# Determinism sweep"
  echo
  echo "\`scripts/replay-seeds.sh --seeds $seeds --first $first --steps $steps\` on $(nproc) cores,"
  echo "commit $commit$dirty, $(date -u +%Y-%m-%dT%H:%MZ), $elapsed s."
  echo
  echo "Each seed runs the deterministic simulation (tests/simulation.rs: the whole tree on a manual"
  echo "clock, five users, seeded faults on every exchange operation, database outages and trader"
  echo "panics) twice for $steps candles, and compares the two runs' decisions, faults and orders"
  echo "line by line (up to the first Healer action, a wall-clock event, when there is one)."
  echo
  echo "- seeds run: $seeds ($first to $last)"
  echo "- replayed identically: $passed"
  if [ "${#failed_seeds[@]}" -eq 0 ]; then
    echo "- replayed differently: none"
  else
    echo "- replayed differently: ${#failed_seeds[@]} (${failed_seeds[*]})"
  fi
} > "$summary"
echo "replay-seeds.sh: summary written to $summary"
[ "${#failed_seeds[@]}" -eq 0 ]
