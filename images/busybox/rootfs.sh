#!/usr/bin/env bash
# Makes the root filesystem of kiln/busybox in $1 from Debian's busybox-static package
# (apt-get install busybox-static): the static binary, a link per applet, a passwd that
# names uid 1000 `kiln`, and an empty /tmp.
set -euo pipefail
out=$1
busybox=${KILN_BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ]; then
  echo "no busybox at $busybox: install Debian's busybox-static (apt-get install busybox-static) or set KILN_BUSYBOX" >&2
  exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "$busybox is dynamically linked; kiln/busybox needs the static one (package busybox-static)" >&2
  exit 1
fi
mkdir -p "$out/bin" "$out/etc" "$out/tmp" "$out/kiln"
install -m 0755 "$busybox" "$out/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$out/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nkiln:x:1000:1000:kiln:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$out/etc/passwd"
printf 'root:x:0:\nkiln:x:1000:\nnogroup:x:65534:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
