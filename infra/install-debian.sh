#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks use, when run as root and missing.
set -euo pipefail
PACKAGES=(dcmtk postgresql orthanc orthanc-gdcm chromium poppler-utils zbar-tools rsyslog rsyslog-gnutls openssl)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq
# Debian's packages start their services on install; the tests start their own instances.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
rm -f /usr/sbin/policy-rc.d
