#!/usr/bin/env bash
# mkimage.sh builds the benchmark image PERFORMANCE.md describes: ~6 gzip-6
# layers, ~300 MB compressed, ~900 MB unpacked, tens of thousands of real
# files from this machine (Go source tree, big binaries, Python stdlib,
# locales, /usr/bin). The layer tarballs are cached outside the repo; the
# output is their paths, one per line, base layer first.
set -euo pipefail
CACHE=${S3SNAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s3snap}/bench
mkdir -p "$CACHE"
layers=(
  "go-src:usr/local/go/src usr/local/go/test"
  "go-bin:usr/local/go/pkg usr/local/go/bin"
  "python:usr/lib/python3.11 usr/lib/python3"
  "locale:usr/share/locale usr/share/i18n usr/share/zoneinfo"
  "usr-bin:usr/bin"
  "gcc:usr/lib/gcc usr/libexec"
)
for spec in "${layers[@]}"; do
  name=${spec%%:*}
  out="$CACHE/$name.tar.gz"
  if [[ ! -s "$out" ]]; then
    paths=()
    for p in ${spec#*:}; do [[ -e "/$p" ]] && paths+=("$p"); done
    [[ ${#paths[@]} -gt 0 ]] || { echo "mkimage: none of ${spec#*:} exist" >&2; exit 1; }
    # Fixed order and owner so the layer is the same every time.
    tar -C / --sort=name --owner=0 --group=0 --numeric-owner --mtime=2026-01-01 \
      -cf - "${paths[@]}" 2>/dev/null | gzip -6 -n >"$out.tmp"
    mv "$out.tmp" "$out"
  fi
  echo "$out"
done
