#!/usr/bin/env bash
# Install Debian packages by name unless already installed, without starting
# their services: tests start what they need, on loopback only.
set -euo pipefail

missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: run as root, or install: ${missing[*]}" >&2
    exit 1
fi

# Postfix's installer prompts for a mail server type; the harness configures its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
# RUNLEVEL=1 keeps invoke-rc.d from starting the packages' daemons.
RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
