#!/usr/bin/env bash
# Check that edgekd's device runner gives the same top-K on aarch64 as on x86 for the same
# artifact: build (once, cached) an arm64 Debian bookworm root, put the aarch64 wheels of numpy
# and ai-edge-litert (or tflite-runtime) in it, make a small synthetic model with edgekd on the
# host, run edgekd/device_runner.py on x86 and under qemu-aarch64, and compare (compare.py).
#
#   sudo bash benchmarks/aarch64/run.sh        # as root: apt-get, debootstrap, chroot
#
# Environment (all optional):
#   EDGEKD_ARM64_ROOT     cache directory (rootfs, wheels, scratch)   [/var/tmp/edgekd-arm64-root]
#   EDGEKD_ARM64_MIRROR   Debian mirror           [the one apt uses here, else deb.debian.org]
#   EDGEKD_ARM64_RUNTIME  auto | litert | tflite-runtime   (auto: litert, else tflite-runtime)
#   EDGEKD_ARM64_EXEC     auto | chroot | qemu    (qemu: qemu-aarch64-static -L ROOT, no binfmt)
#   EDGEKD_ARM64_CPU      the emulated CPU (QEMU_CPU) [cortex-a76, as a Raspberry Pi 5; `max` has
#                         SME, whose emulation in Debian 12's qemu 7.2 gives wrong int8 scores]
#   EDGEKD_ARM64_MAX_DIFF largest fraction of users whose top-10 may differ     [0.02]
#   EDGEKD_PYTHON         host python with edgekd installed          [REPO/.venv/bin/python]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${EDGEKD_ARM64_ROOT:-/var/tmp/edgekd-arm64-root}
ROOTFS=$CACHE/rootfs
WHEELS=$CACHE/wheels
WORK=$CACHE/work                 # models, inputs, results of this run: rebuilt every run
SUITE=bookworm                   # python3.11, as on the host
PY=${EDGEKD_PYTHON:-$REPO/.venv/bin/python}
RUNTIME=${EDGEKD_ARM64_RUNTIME:-auto}
EXEC=${EDGEKD_ARM64_EXEC:-auto}
MAX_DIFF=${EDGEKD_ARM64_MAX_DIFF:-0.02}
ARM_CPU=${EDGEKD_ARM64_CPU:-cortex-a76}
QEMU=/usr/bin/qemu-aarch64-static
IN_ROOT=/tmp/edgekd-run          # where the runner, model and inputs go inside the root
RUNNER_ARGS=(--threads 1 --min-runs 20 --min-seconds 0.1 --warmup 2 --topk 20)

T_START=$(date +%s)
log() { printf '[aarch64 %4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
declare -A SECONDS_OF=()
mark() { SECONDS_OF[$1]=$(( $(date +%s) - $2 )); }

# Mounts this run makes inside the root (proc, sys, cpuinfo), undone on exit, last first.
MOUNTS=()
unmount_all() {
    local i
    for (( i = ${#MOUNTS[@]} - 1; i >= 0; i-- )); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap unmount_all EXIT
is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }
mount_in_root() {   # mount_in_root TARGET MOUNT-ARGS...
    local target=$1; shift
    is_mounted "$target" || { mount "$@" "$target" && MOUNTS+=("$target"); }
}
# Anything a killed earlier run left mounted in the root, before deleting any of it.
unmount_stale() {
    local m
    for m in $( (findmnt -rn -o TARGET 2>/dev/null || true) | grep -F "$ROOTFS/" | sort -r || true); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

[[ $(id -u) == 0 ]] || die "run as root (apt-get, debootstrap and chroot need it)"
[[ $(uname -m) == x86_64 ]] || log "warning: host is $(uname -m), not x86_64"
[[ -x $PY ]] || die "no host python at $PY (make the venv, or set EDGEKD_PYTHON)"
mkdir -p "$CACHE" "$WHEELS"

# ---------------------------------------------------------------- 1. host packages
t=$(date +%s)
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
if (( ${#need[@]} )); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mark apt "$t"

# ---------------------------------------------------------------- 2. the arm64 root
# The mirror apt uses on this machine (the only one reachable here): the first enabled `deb`
# source for Debian's main archive, in one-line (.list) or deb822 (.sources) form.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             { types = uris = ""; on = 1
               for (i = 1; i <= NF; i++) {
                 if ($i ~ /^Types:/) types = $i
                 if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                 if ($i ~ /^Enabled:[ \t]*no/) on = 0 }
               if (on && types ~ /[ \t]deb([ \t]|$)/ && uris != "") { split(uris, u, /[ \t]+/); print u[1] } }' "$f"
    done
}
pick_mirror() {
    local m
    # The main archive, not -security/-updates or third-party repositories.
    m=$(apt_mirror | grep -E '/debian/?$' | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${EDGEKD_ARM64_MIRROR:-$(pick_mirror)}

# Can the kernel run arm64 ELF files through qemu (binfmt_misc)? Needed by chroot and by
# debootstrap's second stage; without it the script extracts the packages and runs python as
# `qemu-aarch64-static -L ROOT`, which needs no kernel support.
binfmt_ok() { [[ -x $ROOTFS/bin/true ]] && chroot "$ROOTFS" /bin/true 2>/dev/null; }
try_binfmt() {
    [[ $EXEC == qemu ]] && return 1
    binfmt_ok && return 0
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || return 1
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 2>/dev/null \
            || update-binfmts --import qemu-aarch64 2>/dev/null || true
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 && -w /proc/sys/fs/binfmt_misc/register ]]; then
        # F: the kernel opens the interpreter now, so it needs not exist inside the root.
        printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F' \
            > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
    fi
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] && echo 1 > /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || true
    binfmt_ok
}

t=$(date +%s)
STAMP=$ROOTFS/.edgekd-rootfs
if [[ -f $STAMP ]]; then
    log "arm64 root cached at $ROOTFS ($(cat "$STAMP"))"
else
    log "building arm64 $SUITE root at $ROOTFS from $MIRROR"
    unmount_stale
    rm -rf --one-file-system "$ROOTFS"
    keyring=()
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    debootstrap --arch=arm64 --foreign --variant=minbase "${keyring[@]}" \
        --include=python3,libstdc++6 "$SUITE" "$ROOTFS" "$MIRROR" > "$CACHE/debootstrap-1.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap-1.log" >&2; die "debootstrap (first stage) failed"; }
    cp "$QEMU" "$ROOTFS/usr/bin/"   # for a non-F binfmt registration, which looks it up in the root
    if try_binfmt; then
        log "second stage under qemu-aarch64 (binfmt_misc), a few minutes"
        chroot "$ROOTFS" /debootstrap/debootstrap --second-stage > "$CACHE/debootstrap-2.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap-2.log" >&2; die "debootstrap (second stage) failed"; }
        echo "debootstrap second stage, $(date -u +%FT%TZ)" > "$STAMP"
    else
        # No binfmt_misc (a container): the packages debootstrap fetched, unpacked as dpkg would
        # without running their scripts; enough for python3 and the wheels.
        log "no binfmt_misc for arm64: unpacking the packages with dpkg-deb (no maintainer scripts)"
        n=0
        for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do
            dpkg-deb -x "$deb" "$ROOTFS"; n=$((n + 1))
        done
        (( n )) || die "debootstrap fetched no packages into $ROOTFS/var/cache/apt/archives"
        echo "dpkg-deb -x of $n packages, $(date -u +%FT%TZ)" > "$STAMP"
    fi
fi
mark rootfs "$t"

# How to run the root's python: chroot when the kernel runs arm64 binaries, else qemu -L.
if [[ $EXEC == auto ]]; then
    if try_binfmt; then EXEC=chroot; else EXEC=qemu; fi
elif [[ $EXEC == chroot ]]; then
    try_binfmt || die "EDGEKD_ARM64_EXEC=chroot but the kernel can't run arm64 binaries (binfmt_misc)"
fi
[[ $EXEC == chroot || $EXEC == qemu ]] || die "EDGEKD_ARM64_EXEC must be auto, chroot or qemu"
ARM_PY=/usr/bin/python3.11
[[ -e $ROOTFS$ARM_PY ]] || die "no $ARM_PY in $ROOTFS (remove $CACHE and rerun)"

# arm_python SITE ARGS...: the root's python3.11 with SITE (a path inside the root) as its only
# non-stdlib packages: -S skips site-packages, so nothing from the host or the root leaks in.
arm_python() {
    local site=$1; shift
    local env=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$ARM_CPU"
               PYTHONPATH="$site" PYTHONDONTWRITEBYTECODE=1)
    if [[ $EXEC == chroot ]]; then
        chroot "$ROOTFS" "${env[@]}" "$ARM_PY" -S "$@"
    else
        # -L: the guest's paths resolve inside ROOTFS first (loader, libraries, /tmp/edgekd-run).
        "${env[@]}" "$QEMU" -L "$ROOTFS" "$ROOTFS$ARM_PY" -S "$@"
    fi
}
log "aarch64 python: $(arm_python / -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])') via $EXEC, QEMU_CPU=$ARM_CPU"

# What the runtime's CPU detection reads on a device: /proc (with an arm64 cpuinfo, which
# qemu 7.2 does not provide: see cpuinfo.py) and /sys. Without them XNNPACK is silently off.
cp "$HERE/cpuinfo.py" "$ROOTFS/tmp/edgekd-cpuinfo.py"
arm_python / /tmp/edgekd-cpuinfo.py "$(nproc)" > "$CACHE/cpuinfo" || die "cpuinfo.py failed under emulation"
if [[ $EXEC == chroot ]]; then
    mount_in_root "$ROOTFS/proc" -t proc proc
    mount_in_root "$ROOTFS/proc/cpuinfo" --bind "$CACHE/cpuinfo"
    mount_in_root "$ROOTFS/sys" -t sysfs sysfs
elif ! is_mounted "$ROOTFS/proc"; then
    # qemu -L looks a guest path up in the root first, then on the host: the root's
    # /proc/cpuinfo (a plain file here), the host's /proc/self and /sys.
    cp "$CACHE/cpuinfo" "$ROOTFS/proc/cpuinfo"
fi

# ---------------------------------------------------------------- 3. aarch64 wheels
# Installed with the host's pip for the target platform (no emulated pip), one dir per runtime.
# Any manylinux tag up to the root's glibc (2.36 in bookworm): tflite-runtime 2.14 is 2_34.
PIP_PLATFORM=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none
              --platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PIP_PLATFORM+=(--platform "manylinux_2_${minor}_aarch64"); done
host_version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
# install_wheels NAME REQUIREMENT...: wheels to $WHEELS/NAME, installed to /opt/edgekd/NAME.
install_wheels() {
    local name=$1; shift
    local site=/opt/edgekd/$name stamp="$ROOTFS/opt/edgekd/.$name"
    if [[ -f $stamp && $(cat "$stamp") == "$*" ]]; then
        log "wheels for $name cached: $*"
    else
        log "aarch64 wheels for $name: $*"
        rm -rf "$ROOTFS$site" "$stamp"
        # (errexit is off inside a function called from `&&`/`||`: every step checks itself)
        mkdir -p "$WHEELS/$name" || return 1
        { "$PY" -m pip download -q "${PIP_PLATFORM[@]}" -d "$WHEELS/$name" "$@" \
          && "$PY" -m pip install -q --no-index --find-links "$WHEELS/$name" "${PIP_PLATFORM[@]}" \
                 --no-compile --no-warn-conflicts --target "$ROOTFS$site" "$@"; } > "$CACHE/pip-$name.log" 2>&1 \
            || { tail -n 5 "$CACHE/pip-$name.log" >&2; return 1; }
        echo "$*" > "$stamp" || return 1
    fi
    echo "$site"
}
t=$(date +%s)
# The same versions as the host's venv, so that only the CPU differs.
NUMPY_V=$(host_version numpy)
LITERT_V=$(host_version ai-edge-litert 2>/dev/null || true)
ARM_RUNTIME="" ARM_SITE="" FALLBACK_REASON=""
use_tflite_runtime() {   # the fallback: what older devices have, built against numpy 1
    ARM_SITE=$(install_wheels tflite-runtime "numpy<2" "tflite-runtime==2.14.0") \
        || die "no aarch64 wheels for tflite-runtime either"
    ARM_RUNTIME=tflite-runtime
}
case $RUNTIME in
    auto|litert)
        if [[ -n $LITERT_V ]] && ARM_SITE=$(install_wheels litert "numpy==$NUMPY_V" "ai-edge-litert==$LITERT_V"); then
            ARM_RUNTIME=litert
        else
            FALLBACK_REASON="no aarch64 wheels for ai-edge-litert${LITERT_V:+==$LITERT_V} (numpy==$NUMPY_V)"
            [[ $RUNTIME == litert ]] && die "$FALLBACK_REASON"
            log "$FALLBACK_REASON: falling back to tflite-runtime"
            use_tflite_runtime
        fi ;;
    tflite-runtime) use_tflite_runtime ;;
    *) die "EDGEKD_ARM64_RUNTIME must be auto, litert or tflite-runtime" ;;
esac
mark wheels "$t"

# ---------------------------------------------------------------- 4. artifacts (host, x86)
t=$(date +%s)
rm -rf "$WORK"
mkdir -p "$WORK"
log "training + exporting a small synthetic model with edgekd on the host"
(cd "$REPO" && "$PY" "$HERE/make_artifacts.py" "$WORK" > "$WORK/make_artifacts.log" 2>&1) \
    || { tail -n 30 "$WORK/make_artifacts.log" >&2; die "make_artifacts.py failed"; }
mark artifacts "$t"

# ---------------------------------------------------------------- 5. run on x86 and aarch64
RUN_DIR=$ROOTFS$IN_ROOT
rm -rf --one-file-system "$RUN_DIR"
mkdir -p "$RUN_DIR"
cp "$REPO/edgekd/device_runner.py" "$WORK/eval.npz" "$RUN_DIR/"
FORMATS=(tflite-fp32 tflite-int8)
for fmt in "${FORMATS[@]}"; do
    cp "$WORK/models/arm-$fmt/model.tflite" "$RUN_DIR/$fmt.tflite"
    : > "$RUN_DIR/aarch64-$fmt.json"   # exists in the root, so qemu -L writes it there too
done

# The host runs the same copy of the runner as the root: alone in its directory, as on a device
# (run from edgekd/, a module there named like a stdlib one would shadow it).
t=$(date +%s)
for fmt in "${FORMATS[@]}"; do
    log "x86 host: $fmt"
    "$PY" "$RUN_DIR/device_runner.py" --model "$RUN_DIR/$fmt.tflite" --runtime litert \
        --inputs "$RUN_DIR/eval.npz" "${RUNNER_ARGS[@]}" --out "$WORK/x86-$fmt.json" 2> "$WORK/x86-$fmt.log" \
        || { cat "$WORK/x86-$fmt.log" >&2; die "device_runner failed on the host for $fmt"; }
done
mark x86_runs "$t"

# arm_run RUNTIME SITE FMT: device_runner.py under emulation; writes $WORK/aarch64-FMT.json.
arm_run() {
    local rt=$1 site=$2 fmt=$3
    arm_python "$site" "$IN_ROOT/device_runner.py" --model "$IN_ROOT/$fmt.tflite" --runtime "$rt" \
        --inputs "$IN_ROOT/eval.npz" "${RUNNER_ARGS[@]}" --out "$IN_ROOT/aarch64-$fmt.json" \
        > "$WORK/aarch64-$fmt.log" 2>&1 || return 1
    cp "$RUN_DIR/aarch64-$fmt.json" "$WORK/aarch64-$fmt.json"
}
t=$(date +%s)
arm_all() {   # (errexit is off in functions called from `if`: return codes by hand)
    local fmt
    for fmt in "${FORMATS[@]}"; do
        log "aarch64 ($EXEC, QEMU_CPU=$ARM_CPU, $ARM_RUNTIME): $fmt"
        if ! arm_run "$ARM_RUNTIME" "$ARM_SITE" "$fmt"; then
            FALLBACK_REASON="$ARM_RUNTIME failed on $fmt: $(tail -n 3 "$WORK/aarch64-$fmt.log" | tr '\n' ' ')"
            return 1
        fi
    done
}
if ! arm_all; then
    [[ $RUNTIME == auto && $ARM_RUNTIME == litert ]] || die "$FALLBACK_REASON"
    log "$FALLBACK_REASON: falling back to tflite-runtime"
    use_tflite_runtime
    arm_all || die "$FALLBACK_REASON"
fi
mark aarch64_runs "$t"

# ---------------------------------------------------------------- 6. compare + summary
# How this run was made, for the summary (JSON written by python: no quoting by hand).
timings=""
for k in apt rootfs wheels artifacts x86_runs aarch64_runs; do timings+="$k=${SECONDS_OF[$k]} "; done
EXEC="$EXEC" ARM_CPU="$ARM_CPU" ROOTFS_HOW="$(cat "$STAMP")" MIRROR="$MIRROR" RUNTIME="$RUNTIME" \
ARM_RUNTIME="$ARM_RUNTIME" FALLBACK_REASON="$FALLBACK_REASON" QEMU_VERSION="$("$QEMU" --version | head -n1)" \
RUNNER_ARGS="${RUNNER_ARGS[*]}" TIMINGS="$timings" TOTAL=$(( $(date +%s) - T_START )) \
WORK="$WORK" CPUINFO="$CACHE/cpuinfo" FORMATS="${FORMATS[*]}" "$PY" - > "$WORK/meta.json" <<'PY'
import json, os, platform
e = os.environ
work = e["WORK"]
cpu = {}
for line in open(e["CPUINFO"]):
    k, _, v = line.partition(":")
    if k.strip() in ("Features", "CPU implementer", "CPU part", "CPU variant") and k.strip() not in cpu:
        cpu[k.strip()] = v.strip()
def log_facts(path):
    text = open(path).read() if os.path.exists(path) else ""
    return {"xnnpack_delegate": "XNNPACK delegate for CPU" in text,
            "cpuinfo_errors": text.count("Error in cpuinfo")}
print(json.dumps({
    "exec": e["EXEC"], "qemu": e["QEMU_VERSION"], "qemu_cpu": e["ARM_CPU"], "guest_cpuinfo": cpu,
    "rootfs": e["ROOTFS_HOW"], "mirror": e["MIRROR"],
    "arm_runtime_requested": e["RUNTIME"], "arm_runtime": e["ARM_RUNTIME"],
    "fallback_reason": e["FALLBACK_REASON"] or None,
    "host": {"machine": platform.machine(), "kernel": platform.release()},
    "runner_args": e["RUNNER_ARGS"],
    "logs": {f"{side}-{fmt}": log_facts(f"{work}/{side}-{fmt}.log")
             for fmt in e["FORMATS"].split() for side in ("x86", "aarch64")},
    "seconds": {**{k: int(v) for k, v in (kv.split("=") for kv in e["TIMINGS"].split())},
                "total_before_compare": int(e["TOTAL"])},
}))
PY

pairs=()
for fmt in "${FORMATS[@]}"; do pairs+=(--pair "$fmt" "$WORK/x86-$fmt.json" "$WORK/aarch64-$fmt.json"); done
"$PY" "$HERE/compare.py" "${pairs[@]}" --k 10 --max-diff "$MAX_DIFF" \
    --manifest "$WORK/manifest.json" --meta "$WORK/meta.json" \
    --out "$HERE/results-$(date +%Y%m%d).json"
