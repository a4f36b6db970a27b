#!/usr/bin/env bash
# Makes the root filesystem of kiln/agent-claude-code in $1: Debian bookworm minbase (debootstrap, as
# root) with Node.js and npm from Debian, and Claude Code (`@anthropic-ai/claude-code`) installed from the npm
# registry (set KILN_NPM_REGISTRY to use a mirror).
set -euo pipefail
out=$1
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
registry=${KILN_NPM_REGISTRY:-https://registry.npmjs.org/}
command -v debootstrap >/dev/null || { echo "debootstrap is not installed: apt-get install debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root to build kiln/agent-claude-code" >&2; exit 1; }
# npm's dependencies are more than debootstrap's resolver can untangle: apt installs it below.
debootstrap --variant=minbase --include=git,ca-certificates,nodejs bookworm "$out" "$mirror" >&2
# The build reaches the registry as the host does: its resolver and its trust store (which may
# hold a proxy's CA), both removed again below.
cp /etc/resolv.conf "$out/etc/resolv.conf"
# Run in the new root with nothing of the caller's environment (its pip or npm settings).
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$out" "$@"; }
cp /etc/ssl/certs/ca-certificates.crt "$out/tmp/build-ca.crt"
in_root sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm' >&2
in_root npm install --global --no-fund --no-audit --cafile /tmp/build-ca.crt --registry "$registry" @anthropic-ai/claude-code >&2
# Nothing of the build host stays: no resolver, device nodes, package caches or machine identity.
rm -rf "$out/etc/resolv.conf" "$out/tmp/build-ca.crt" "$out/root/.npm" "$out"/dev/* "$out"/var/cache/apt/archives/*.deb "$out"/var/lib/apt/lists/* "$out"/etc/machine-id
echo 'kiln:x:1000:1000:kiln:/tmp:/bin/sh' >>"$out/etc/passwd"
echo 'kiln:x:1000:' >>"$out/etc/group"
mkdir -p "$out/kiln"
