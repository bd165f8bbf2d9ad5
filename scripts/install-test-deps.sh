#!/usr/bin/env bash
# Installs what the real-NAT test (tests/nat_netns.rs) needs: iproute2 (`ip`, for
# network namespaces and veth pairs) and nftables (`nft`, for the NAT router).
# Only as root, only with apt-get, only when something is missing; quiet otherwise.
# Elsewhere it does nothing and the test skips with a visible message.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: ${missing[*]} missing (need root and apt-get to install); the NAT test will skip" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || echo "install-test-deps: could not install ${missing[*]}; the NAT test will skip" >&2
fi
exit 0
