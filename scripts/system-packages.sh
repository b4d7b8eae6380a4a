#!/usr/bin/env bash
# Installs the Debian packages the service and its tests run for real when missing: bubblewrap
# (the job sandbox), Redis and PostgreSQL, and Chromium (the dashboard's browser tests).
set -euo pipefail
packages=()
command -v bwrap >/dev/null 2>&1 || packages+=(bubblewrap)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${packages[*]}; install them with: sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
