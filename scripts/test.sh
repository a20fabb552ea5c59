#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: installs the three programs some tests call
# when they are missing (with apt, as root or through sudo), then runs `cargo test --locked`.
#   systemd-analyze  (Debian's systemd)     tests/service.rs verifies scripts/bulwark.service
#   promtool         (Debian's prometheus)  tests/http.rs checks a real /metrics scrape
#   chromium         (Debian's chromium)    tests/dashboard.rs loads the dashboard headless
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test http`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing what the tests call: ${missing[*]}"
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
systemd-analyze --version | head -1
promtool --version | head -1
chromium --version | head -1

cargo test --locked "$@"
