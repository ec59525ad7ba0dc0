#!/usr/bin/env bash
# Installs the real servers and clients the test suite starts on ephemeral
# ports (Debian packages). Idempotent: does nothing when all are present.
set -euo pipefail

declare -A want=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [nats-server]=nats-server
  [influxd]=influxdb
  [prometheus]=prometheus # promtool too
  [curl]=curl             # the README's examples (tests/e2e/test_readme.py)
  # The dashboard's browser tests: Debian's Chromium and its matching driver
  # (never a downloaded browser).
  [chromium]=chromium
  [chromedriver]=chromium-driver
  # The cut-link tests (tests/chaos/tiers): network namespaces, veth pairs,
  # NAT and packet loss (nftables), rate limits (tc); tests/netns.py.
  [ip]=iproute2
  [tc]=iproute2
  [nft]=nftables
)

missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
