#!/usr/bin/env bash
# Makes the root filesystem of kiln/debian in $1 with debootstrap (apt-get install debootstrap;
# needs root). Only Debian's own package archive is reached.
set -euo pipefail
out=$1
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if ! command -v debootstrap >/dev/null; then
  echo "debootstrap is not installed: apt-get install debootstrap" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "debootstrap needs root to build kiln/debian" >&2
  exit 1
fi
debootstrap --variant=minbase --include=git,ca-certificates,curl,gcc,libc6-dev,make bookworm "$out" "$mirror" >&2
# Nothing of the build host stays: no device nodes, package caches or machine identity.
rm -rf "$out"/dev/* "$out"/var/cache/apt/archives/*.deb "$out"/var/lib/apt/lists/* "$out"/etc/machine-id
echo 'kiln:x:1000:1000:kiln:/tmp:/bin/sh' >>"$out/etc/passwd"
echo 'kiln:x:1000:' >>"$out/etc/group"
mkdir -p "$out/kiln"
