#!/usr/bin/env bash
# Installs bulwark as a systemd service (run as root from a checkout):
#   scripts/install.sh
# - builds the release binary and copies it to /usr/local/bin/bulwark;
# - creates the system user `bulwark` and /var/lib/bulwark (data and logs, owned by it);
# - copies config/bulwark.toml to /etc/bulwark/bulwark.toml unless one is there (never overwritten);
# - creates /etc/bulwark/bulwark.env (mode 0600, empty) for API keys unless one is there;
# - installs scripts/bulwark.service, reloads systemd and enables (does not start) the service.
# Then: edit /etc/bulwark/bulwark.toml and bulwark.env, check both (check-config reads the key
# variables as run does: `sh -c 'set -a; . /etc/bulwark/bulwark.env; exec bulwark check-config
# --config /etc/bulwark/bulwark.toml'`), and `systemctl start bulwark`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

# Build as the user who called sudo (their toolchain, their target/), install as root.
builder="${SUDO_USER:-root}"
if [ "$builder" != root ]; then
  sudo -u "$builder" -H bash -lc "cd '$PWD' && cargo build --release --locked"
else
  cargo build --release --locked
fi
install -m 0755 target/release/bulwark /usr/local/bin/bulwark

id -u bulwark >/dev/null 2>&1 || useradd --system --home-dir /var/lib/bulwark --shell /usr/sbin/nologin bulwark
install -d -m 0750 -o bulwark -g bulwark /var/lib/bulwark
install -d -m 0750 -o root -g bulwark /etc/bulwark
[ -e /etc/bulwark/bulwark.toml ] || install -m 0640 -o root -g bulwark config/bulwark.toml /etc/bulwark/bulwark.toml
[ -e /etc/bulwark/bulwark.env ] || install -m 0600 -o bulwark -g bulwark /dev/null /etc/bulwark/bulwark.env
install -d /usr/local/share/doc/bulwark
install -m 0644 README.md actors.md /usr/local/share/doc/bulwark/

install -m 0644 scripts/bulwark.service /etc/systemd/system/bulwark.service
systemd-analyze verify /etc/systemd/system/bulwark.service
systemctl daemon-reload
systemctl enable bulwark.service
echo "installed; edit /etc/bulwark/bulwark.toml and /etc/bulwark/bulwark.env, then: systemctl start bulwark"
