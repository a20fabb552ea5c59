#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: installs the programs some tests call when
# they are missing (with apt, as root or through sudo), then runs `cargo test --locked`.
#   systemd-analyze  (Debian's systemd)     tests/service.rs verifies scripts/bulwark.service
#   promtool         (Debian's prometheus)  tests/http.rs checks a real /metrics scrape
#   chromium         (Debian's chromium)    tests/dashboard.rs loads the dashboard headless
#   python3 -m venv  (Debian's python3-venv) and ccxt from PyPI (tests/conformance/requirements.txt)
#                    in ${CARGO_TARGET_DIR:-target}/conformance-venv: tests/conformance.rs drives
#                    `bulwark sim` with ccxt, a third-party Binance client
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test http`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Debian's python3 makes venvs only with python3-venv (ensurepip).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)
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

# ccxt, pinned, in a venv where tests/conformance.rs looks for it (next to cargo's build output).
venv="${CARGO_TARGET_DIR:-target}/conformance-venv"
requirements=tests/conformance/requirements.txt
ccxt_pinned="$(sed -n 's/^ccxt==//p' "$requirements")"
if ! "$venv/bin/python" -c "import sys, ccxt; sys.exit(ccxt.__version__ != '$ccxt_pinned')" >/dev/null 2>&1; then
  echo "== installing ccxt $ccxt_pinned into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
fi
"$venv/bin/python" -c 'import ccxt; print("ccxt", ccxt.__version__)'

cargo test --locked "$@"
