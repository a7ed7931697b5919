#!/usr/bin/env bash
# Unpack a device call's results.tar into this checkout's results/: only the experiments the call
# ran (named by its logs, "[i/n] NAME: running …"), and delete here the files of those experiment
# folders that the call deleted there (tar only adds): e.g. a partial.json once every run of the
# grid finished, or a .complete when an experiment became partial.
#
#   bash tools/unpack_results.sh /work/.device/N/results.tar
#
# The tar holds all of results/ as the call's working tree had it. Unpacking all of it would put back
# what this checkout had when the call started: a call made before the previous call's tar was
# unpacked here would then overwrite (and, by the deletion pass, delete) that call's newer results.
set -eu
tar=${1:?usage: tools/unpack_results.sh /work/.device/N/results.tar}
[ -f "$tar" ] || { echo "no such file: $tar" >&2; exit 2; }
logs=$(dirname "$tar")/log*.txt
ran=$(cat $logs 2>/dev/null | sed -nE 's/^\[[0-9]+\/[0-9]+\] ([A-Za-z0-9_]+): running .*/\1/p' | sort -u)
[ -n "$ran" ] || { echo "no experiment named as run in $logs: nothing unpacked" >&2; exit 2; }
listed=$(mktemp); trap 'rm -f "$listed"' EXIT
tar -tf "$tar" | sed 's#/$##' | sort -u > "$listed"
for e in $ran; do
  members=$(grep -E "^results/[^/]+/$e(/|\.[a-z]+$)" "$listed" || true)
  [ -n "$members" ] || { echo "$e: not in $tar" >&2; continue; }
  echo "$members" | tr '\n' '\0' | xargs -0 tar -xf "$tar" --no-recursion
  echo "unpacked $e"
  # results/<profile>/<experiment>: its own files (not runs/), compared with the tar's
  grep -E "^results/[^/]+/$e$" "$listed" | while read -r d; do
    [ -d "$d" ] || continue
    find "$d" -maxdepth 1 -type f | while read -r f; do
      grep -qxF "$f" "$listed" || { echo "deleted by the call: $f"; rm -f "$f"; }
    done
    # a run the call's summary lists as missing may have finished here meanwhile (another call's tar): say how
    # to collect the summary over both without running anything
    python3 - "$d" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
for p in sorted(d.glob("*partial.json")):
    done = [m for m in json.loads(p.read_text()).get("missing", []) if (d / "runs" / m / "result.json").is_file()]
    if done:
        print(f"{d.name}: {p.name} lists {len(done)} missing run(s) that have finished here ({', '.join(done)}); "
              f"collect the summary: .venv/bin/python -m pillm experiments --profile {d.parent.name} "
              f"--only {d.name} --finished-only")
PY
  done
done
