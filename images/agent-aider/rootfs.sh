#!/usr/bin/env bash
# Makes the root filesystem of kiln/agent-aider in $1: Debian bookworm minbase (debootstrap, as
# root) with Python, and Aider (`aider-chat`, the version kiln's adapter and tests were made
# with unless KILN_AIDER_VERSION says otherwise) installed from PyPI into /opt/aider.
set -euo pipefail
out=$1
version=${KILN_AIDER_VERSION:-0.86.2}
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "debootstrap is not installed: apt-get install debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root to build kiln/agent-aider" >&2; exit 1; }
debootstrap --variant=minbase --include=git,ca-certificates,python3,python3-venv bookworm "$out" "$mirror" >&2
# The build reaches PyPI as the host does: its resolver and its trust store (which may hold a
# proxy's CA), both removed again below.
cp /etc/resolv.conf "$out/etc/resolv.conf"
# Run in the new root with nothing of the caller's environment (its pip or npm settings).
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$out" "$@"; }
cp /etc/ssl/certs/ca-certificates.crt "$out/tmp/build-ca.crt"
in_root python3 -m venv /opt/aider >&2
in_root /opt/aider/bin/pip install --no-cache-dir --cert /tmp/build-ca.crt "aider-chat==$version" >&2
ln -sf /opt/aider/bin/aider "$out/usr/local/bin/aider"
# Nothing of the build host stays: no resolver, device nodes, package caches or machine identity.
rm -rf "$out/etc/resolv.conf" "$out/tmp/build-ca.crt" "$out"/dev/* "$out"/var/cache/apt/archives/*.deb "$out"/var/lib/apt/lists/* "$out"/etc/machine-id
echo 'kiln:x:1000:1000:kiln:/tmp:/bin/sh' >>"$out/etc/passwd"
echo 'kiln:x:1000:' >>"$out/etc/group"
mkdir -p "$out/kiln"
