#!/usr/bin/env bash
# The chaos demo: run bulwark for 30 s with user u2's trader panicking on every third decision,
# then show u2's supervision story and everyone's status.
#   scripts/chaos-demo.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"

cargo build --release --quiet
rm -rf data/chaos logs/chaos
mkdir -p logs/chaos
echo "== running config/chaos.toml for ${seconds} s (its log: logs/chaos/bulwark.log)"
target/release/bulwark run --config config/chaos.toml --duration "$seconds" 2>/dev/null || {
  echo "bulwark exited non-zero; see logs/chaos/bulwark.log" >&2
  exit 1
}
echo "== u2 in logs/chaos/supervisor.jsonl"
grep '"user":"u2"' logs/chaos/supervisor.jsonl | grep -v '"event":"tree"'
echo
echo "== bulwark status"
target/release/bulwark status --config config/chaos.toml
