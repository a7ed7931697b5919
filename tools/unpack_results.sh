#!/usr/bin/env bash
# Unpack a device call's results.tar into this checkout's results/, and delete here the files of an
# experiment folder that the call deleted there (tar only adds): e.g. a partial.json once every run of
# the grid finished, or a .complete when an experiment became partial.
#
#   bash tools/unpack_results.sh /work/.device/N/results.tar
set -eu
tar=${1:?usage: tools/unpack_results.sh /work/.device/N/results.tar}
[ -f "$tar" ] || { echo "no such file: $tar" >&2; exit 2; }
listed=$(mktemp); trap 'rm -f "$listed"' EXIT
tar -tf "$tar" | sed 's#/$##' | sort -u > "$listed"
tar -xf "$tar"
# results/<profile>/<experiment>: its own files (not runs/), compared with the tar's
grep -E '^results/[^/]+/[^/]+$' "$listed" | while read -r d; do
  [ -d "$d" ] || continue
  find "$d" -maxdepth 1 -type f | while read -r f; do
    grep -qxF "$f" "$listed" || { echo "deleted by the call: $f"; rm -f "$f"; }
  done
done
