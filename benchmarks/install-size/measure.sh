#!/usr/bin/env bash
# Install size of edgekd: the base install against the [tflite] extra (TFLite conversion), each
# in a fresh venv from the committed tree with the CI pins, then `du` of the venv. Writes
# benchmarks/install-size/record.json. The venvs go to a scratch directory outside the
# repository (WORK, default $TMPDIR or /var/tmp) and are deleted afterwards.
#   benchmarks/install-size/measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
COMMIT=$(git rev-parse HEAD)
WORK=$(mktemp -d "${WORK:-${TMPDIR:-/var/tmp}}/edgekd-install-size.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
git archive "$COMMIT" | tar -x -C "$WORK" --one-top-level=src
for variant in base tflite; do
  spec=.; [ "$variant" = tflite ] && spec='.[tflite]'
  python3 -m venv "$WORK/$variant"
  (cd "$WORK/src" && "$WORK/$variant/bin/pip" install -q -c .ci/constraints.txt "$spec")
  du -sb "$WORK/$variant" | cut -f1 > "$WORK/$variant.bytes"
  "$WORK/$variant/bin/pip" list --format=json > "$WORK/$variant.pkgs.json"
  # the largest installed top-level folders
  du -sb "$WORK/$variant"/lib/python3*/site-packages/* | sort -rn > "$WORK/$variant.all"
  head -12 "$WORK/$variant.all" > "$WORK/$variant.top"
done
python3 - "$WORK" "$COMMIT" "$REPO/benchmarks/install-size/record.json" <<'PY'
import json, os, platform, sys, time
work, commit, dest = sys.argv[1:]
res = {}
for v in ("base", "tflite"):
    pkgs = {p["name"].lower(): p["version"] for p in json.load(open(f"{work}/{v}.pkgs.json"))}
    top = [(os.path.basename(l.split("\t")[1].strip()), int(l.split("\t")[0])) for l in open(f"{work}/{v}.top")]
    res[v] = {"install": "pip install -c .ci/constraints.txt " + (".[tflite]" if v == "tflite" else "."),
              "venv_bytes": int(open(f"{work}/{v}.bytes").read()), "packages": len(pkgs),
              "largest_site_packages_entries_bytes": dict(top), "versions": pkgs}
res["tflite_extra_adds_bytes"] = res["tflite"]["venv_bytes"] - res["base"]["venv_bytes"]
res["tflite_extra_adds_packages"] = sorted(set(res["tflite"]["versions"]) - set(res["base"]["versions"]))
rec = {"command": "benchmarks/install-size/measure.sh", "commit": commit,
       "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs",
       "date": time.strftime("%Y-%m-%d"), "results": res}
open(dest, "w").write(json.dumps(rec, indent=2) + "\n")
print(f"base {res['base']['venv_bytes'] / 1e9:.2f} GB, with [tflite] {res['tflite']['venv_bytes'] / 1e9:.2f} GB")
PY
