#!/usr/bin/env bash
# Builds the sidewatch test guest once into a cache directory and prints it:
#   vmlinuz         the Debian kernel (bzImage; KASLR applies)
#   vmlinux         the same kernel uncompressed (PVH direct boot, ~3 s, no KASLR)
#   config          the kernel's build config
#   initramfs.cpio.gz  busybox init + known programs (see src/)
#   libvictim.so    the shared library the victim runs, for ground-truth symbol offsets
#
# Usage: build.sh [FLAVOUR]   FLAVOUR: amd64 (default), cloud-amd64 or rt-amd64.
# Needs Debian packages: busybox-static cpio xz-utils lz4 zstd gcc libc6-dev (and apt lists).
set -euo pipefail

flavour="${1:-${SIDEWATCH_GUEST_FLAVOUR:-amd64}}"
here="$(cd "$(dirname "$0")" && pwd)"
CACHE_ROOT="${SIDEWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidewatch}"
log() { echo "guest: $*" >&2; }

# The metapackage names the current kernel package, e.g. linux-image-6.1.0-56-amd64.
kpkg="$(apt-cache depends "linux-image-${flavour}" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
if [[ -z "$kpkg" ]]; then
  echo "guest: cannot resolve linux-image-${flavour}: run apt-get update first" >&2
  exit 1
fi
kver="$(apt-cache policy "$kpkg" | sed -n 's/^ *Candidate: //p')"
# The initramfs content is part of the cache key so that changing src/ rebuilds.
srcsum="$(cat "$here/build.sh" "$here"/src/* | sha256sum | cut -c1-12)"
OUT="$CACHE_ROOT/guest/${kpkg}_${kver}_${srcsum}"

if [[ -f "$OUT/.done" ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [[ -f "$OUT/.done" ]]; then
  echo "$OUT"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "fetching $kpkg $kver"
(cd "$work" && apt-get download -q "$kpkg" 2>&1 >/dev/null | grep -v 'performed unsandboxed' >&2 || true)
ls "$work"/${kpkg}_*.deb >/dev/null
dpkg -x "$work"/${kpkg}_*.deb "$work/kernel"
cp "$work"/kernel/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$work"/kernel/boot/config-* "$OUT/config"

# PVH direct boot needs the uncompressed ELF: find the compressed payload in
# the bzImage and decompress it (what the kernel's scripts/extract-vmlinux
# does). Flavours differ: amd64 and rt-amd64 use xz, cloud-amd64 uses lz4.
extract() { # magic decompressor...
  local magic="$1" off
  shift
  for off in $(LC_ALL=C grep -abo "$magic" "$OUT/vmlinuz" | head -n4 | cut -d: -f1); do
    tail -c +$((off + 1)) "$OUT/vmlinuz" | "$@" 2>/dev/null >"$OUT/vmlinux.tmp" || true
    if head -c 4 "$OUT/vmlinux.tmp" | grep -q $'\x7fELF'; then
      return 0
    fi
  done
  return 1
}
if ! extract $'\xfd7zXZ\x00' xz -dc &&
  ! extract $'\x02\x21\x4c\x18' lz4 -dc &&
  ! extract $'\x28\xb5\x2f\xfd' zstd -dc &&
  ! extract $'\x1f\x8b\x08' gzip -dc; then
  echo "guest: extracting vmlinux from $OUT/vmlinuz failed (xz, lz4, zstd, gzip tried)" >&2
  exit 1
fi
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"

log "building initramfs"
root="$work/root"
mkdir -p "$root"/{bin,lib,lib64,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
gcc -O1 -g -fPIC -shared -o "$root/lib/libvictim.so" "$here/src/libvictim.c"
gcc -O1 -g -o "$root/bin/victim" "$here/src/victim.c" -L"$root/lib" -lvictim
gcc -O1 -g -static -o "$root/bin/spy" "$here/src/spy.c"
gcc -O1 -g -o "$root/bin/idler" "$here/src/idler.c" -L"$root/lib" -lvictim
# The dynamic loader and every library the victim needs, at the paths the
# loader looks for them.
for lib in $(LD_LIBRARY_PATH="$root/lib" ldd "$root/bin/victim" | grep -o '/[^ ]*'); do
  case "$lib" in
  "$root"/*) ;;
  /lib64/*) cp -L "$lib" "$root/lib64/" ;;
  *) cp -L "$lib" "$root/lib/" ;;
  esac
done
# One small kernel module without dependencies, so that tests see module
# addresses (loaded with numdummies=0: no network device appears).
mkdir -p "$root/lib/modules"
dummy="$(find "$work/kernel/lib/modules" -name 'dummy.ko*' | head -n1)"
case "$dummy" in
*.ko) cp "$dummy" "$root/lib/modules/dummy.ko" ;;
*.ko.xz) xz -dc "$dummy" >"$root/lib/modules/dummy.ko" ;;
*.ko.zst) zstd -qdc "$dummy" >"$root/lib/modules/dummy.ko" ;;
esac
cp "$root/lib/libvictim.so" "$OUT/libvictim.so"
cp "$root/bin/victim" "$OUT/victim"
install -m 0755 "$here/src/init" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initramfs.cpio.gz"

echo "$kpkg $kver" >"$OUT/kernel-release"
touch "$OUT/.done"
log "ready in $OUT"
echo "$OUT"
