#!/usr/bin/env bash
# Fleet benchmarks: bulwark's supervision tree against the seed design (one loop per user) for
# 100, 1,000 and 10,000 users on 100 paper symbols, written to docs/BENCHMARKS.md with the
# machine's cores, memory and the commit. Takes about 5 minutes on 2 cores (plus the release
# build). Not part of the test suite.
#
#   scripts/bench.sh                       # N = 100, 1000, 10000 → docs/BENCHMARKS.md
#   scripts/bench.sh --users 100,1000      # other fleet sizes
#   scripts/bench.sh --out /tmp/bench.md   # elsewhere
#
# Each measurement runs in a fresh child process (benches/fleet.rs re-executes itself), so peak
# RSS figures do not mix. Scratch data, child logs and the raw results (results.json) are kept in
# target/bench-fleet/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== machine"
grep -m1 'model name' /proc/cpuinfo || true
echo "nproc: $(nproc)"
grep MemTotal /proc/meminfo
echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"

echo "== build and run (cargo bench --bench fleet)"
cargo bench --locked --bench fleet -- "$@"
