#!/usr/bin/env bash
# Install size of edgekd: the base install and the extras, each in a fresh venv from the
# committed tree with the CI pins, then `du` of the venv. Then, in the base venv and from a
# directory outside the repository, `edgekd pipeline --formats onnx-fp32,onnx-int8` on the
# synthetic default: the ONNX path end to end without any extra. Writes
# benchmarks/install-size/record.json. The venvs go to a scratch directory outside the
# repository (WORK, default $TMPDIR or /var/tmp) and are deleted afterwards.
#   benchmarks/install-size/measure.sh              (SKIP_PIPELINE=1: the sizes only)
# An earlier tree, other installs, another record (the pipeline needs a variant named base):
#   EDGEKD_COMMIT=d9903a2 VARIANTS="base:." SKIP_PIPELINE=1 RECORD=benchmarks/install-size/x.json measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
COMMIT=$(git rev-parse "${EDGEKD_COMMIT:-HEAD}")
RECORD=${RECORD:-benchmarks/install-size/record.json}
COMMAND="benchmarks/install-size/measure.sh"
for var in EDGEKD_COMMIT VARIANTS SKIP_PIPELINE RECORD; do
  [ -n "${!var:-}" ] && COMMAND="$var=\"${!var}\" $COMMAND"
done
WORK=$(mktemp -d "${WORK:-${TMPDIR:-/var/tmp}}/edgekd-install-size.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
git archive "$COMMIT" | tar -x -C "$WORK" --one-top-level=src
# name:pip spec. tflite-report is the README's first command; all is every user-facing extra.
VARIANTS=${VARIANTS:-"base:. report:.[report] large:.[large] tflite-report:.[tflite,report] all:.[all]"}
for v in $VARIANTS; do
  variant=${v%%:*} spec=${v#*:}
  python3 -m venv "$WORK/$variant"
  (cd "$WORK/src" && "$WORK/$variant/bin/pip" install -q -c .ci/constraints.txt "$spec")
  echo "$spec" > "$WORK/$variant.spec"
  du -sb "$WORK/$variant" | cut -f1 > "$WORK/$variant.bytes"
  "$WORK/$variant/bin/pip" list --format=json > "$WORK/$variant.pkgs.json"
  # the largest installed top-level folders
  du -sb "$WORK/$variant"/lib/python3*/site-packages/* | sort -rn > "$WORK/$variant.all"
  head -12 "$WORK/$variant.all" > "$WORK/$variant.top"
done
PIPE_CMD="edgekd pipeline --formats onnx-fp32,onnx-int8"
if [ -z "${SKIP_PIPELINE:-}" ]; then
  # the base venv only, from an empty directory (no repository on the path)
  mkdir "$WORK/run"
  start=$(date +%s)
  rc=0
  (cd "$WORK/run" && env -u PYTHONPATH PATH="$WORK/base/bin:$PATH" $PIPE_CMD > "$WORK/pipeline.log" 2>&1) || rc=$?
  echo "$rc $(( $(date +%s) - start ))" > "$WORK/pipeline.rc"
fi
python3 - "$WORK" "$COMMIT" "$REPO/$RECORD" "$VARIANTS" "$PIPE_CMD" "$COMMAND" <<'PY'
import glob, json, os, platform, sys, time
work, commit, dest, variants, pipe_cmd, command = sys.argv[1:]
names = [v.split(":", 1)[0] for v in variants.split()]
res = {}
for v in names:
    pkgs = {p["name"].lower(): p["version"] for p in json.load(open(f"{work}/{v}.pkgs.json"))}
    top = [(os.path.basename(l.split("\t")[1].strip()), int(l.split("\t")[0])) for l in open(f"{work}/{v}.top")]
    res[v] = {"install": "pip install -c .ci/constraints.txt " + open(f"{work}/{v}.spec").read().strip(),
              "venv_bytes": int(open(f"{work}/{v}.bytes").read()), "packages": len(pkgs),
              "largest_site_packages_entries_bytes": dict(top), "versions": pkgs}
if "base" in res and len(names) > 1:
    base = res["base"]
    res["over_base"] = {v: {"bytes": res[v]["venv_bytes"] - base["venv_bytes"],
                            "packages": sorted(set(res[v]["versions"]) - set(base["versions"]))}
                        for v in names if v != "base"}
if os.path.exists(f"{work}/pipeline.rc"):
    rc, wall = map(int, open(f"{work}/pipeline.rc").read().split())
    log = open(f"{work}/pipeline.log").read().splitlines()
    md = sorted(glob.glob(f"{work}/run/benchmarks/results/*/report.md"))
    run = os.path.dirname(md[-1]) if md else None
    res["base_onnx_pipeline"] = {
        "command": f"cd <empty directory> && {pipe_cmd}", "venv": "base", "exit_code": rc, "wall_s": wall,
        "notices": [l for l in log if "edgekd[" in l or l.startswith("skipping")],
        "report_files": sorted(os.listdir(run)) if run else [],
        "report_md": open(md[-1]).read() if md else None,
        "log_tail": log[-5:],
    }
rec = {"command": command, "commit": commit,
       "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs",
       "date": time.strftime("%Y-%m-%d"), "results": res}
open(dest, "w").write(json.dumps(rec, indent=2) + "\n")
print(", ".join(f"{v} {res[v]['venv_bytes'] / 1e9:.2f} GB" for v in names))
if "base_onnx_pipeline" in res:
    p = res["base_onnx_pipeline"]
    print(f"base venv: {pipe_cmd}: exit {p['exit_code']} in {p['wall_s']} s; report: {p['report_files']}")
PY
