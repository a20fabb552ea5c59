#!/usr/bin/env bash
# The simulator demo: start `bulwark sim` (config/sim-server.toml) as its own process, run bulwark
# against it (config/sim.toml, the real Binance client) for a while with lost responses and hangs
# on order requests, then check every invariant against the simulator's ledger (`bulwark verify`).
#   scripts/sim-demo.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-40}"

cargo build --release --quiet
rm -rf data/sim data/sim-client logs/sim-client
mkdir -p logs/sim-client

# The simulator's test credentials (config/sim-server.toml), where config/sim.toml looks for them.
for n in 1 2 3 4; do
  export "BULWARK_SIM_U${n}_KEY=sim-u${n}-api-key" "BULWARK_SIM_U${n}_SECRET=sim-u${n}-api-secret"
done
export BULWARK_SIM_COINGLASS_KEY=sim-coinglass-key

target/release/bulwark sim --config config/sim-server.toml --speed 300 > logs/sim-client/sim.out 2> logs/sim-client/sim.log &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^listening on ' logs/sim-client/sim.out 2>/dev/null && break
  sleep 0.1
done
url="$(sed -n 's/^listening on //p' logs/sim-client/sim.out)"
[ -n "$url" ] || { echo "the simulator did not start; see logs/sim-client/sim.log" >&2; exit 1; }
echo "== simulator on $url"

echo "== faults on: 20 % lost responses and 10 % hangs on POST /fapi/v1/order"
curl -sf -X POST "$url/sim/faults" -H 'content-type: application/json' \
  -d '{"endpoints": {"POST /fapi/v1/order": {"lost_response_rate": 0.2, "hang_rate": 0.1, "hang_ms": 15000}}}' > /dev/null

echo "== running config/sim.toml for ${seconds} s (its log: logs/sim-client/bulwark.log)"
target/release/bulwark run --config config/sim.toml --duration "$seconds" 2>/dev/null || {
  echo "bulwark exited non-zero; see logs/sim-client/bulwark.log" >&2
  exit 1
}
curl -sf -X POST "$url/sim/faults" -H 'content-type: application/json' -d '{}' > /dev/null
echo "== bulwark reconcile (resolves whatever the stop left in flight)"
target/release/bulwark reconcile --config config/sim.toml

echo
echo "== bulwark status"
target/release/bulwark status --config config/sim.toml
echo
echo "== simulator request counts and weight"
curl -sf "$url/sim/stats"
echo
echo
echo "== bulwark verify (the simulator's ledger against the database: every invariant)"
target/release/bulwark verify --config config/sim.toml --sim-url "$url"
