#!/usr/bin/env bash
# Installs the Debian services the integration tests need (PostgreSQL 15 for the
# PostgreSQL-backed instance, Chromium for the UI test), skipping what is there.
# Idempotent and quiet; needs root (CI runs as root). Usage: scripts/install-services.sh
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-services: need root to install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package starts a cluster of its own; the tests start their own.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
echo "install-services: installed ${need[*]}"
