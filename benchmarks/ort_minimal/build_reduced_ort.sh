#!/usr/bin/env bash
# Build a reduced ("minimal") ONNX Runtime 1.21.0 that contains only the operator kernels named in a
# required-operators config (as written by onnxruntime.tools.convert_onnx_models_to_ort), then compile
# run_ort.c (next to this script) against it.
#
# Made for Debian 12 (bookworm) with no network access except Debian's archive and PyPI: every
# dependency that ORT's cmake would download from GitHub is taken from a Debian package instead.
#
# Usage:  sudo ./build_reduced_ort.sh /path/to/required_operators.config
# Env:    TOP (work root, default /var/tmp), JOBS (parallel compile jobs, default 2),
#         X86_AVX512=1 (see below)
# Result: $TOP/ort-minimal-build/MinSizeRel/libonnxruntime.so* and run_ort next to this script.
set -euo pipefail

CONFIG=$(realpath "${1:?usage: $0 required_operators.config}")
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=${TOP:-/var/tmp}
JOBS=${JOBS:-2}
ORT_VER=1.21.0
SRC=$TOP/ortsrc/onnxruntime-$ORT_VER
DEPS=$TOP/ortdeps
BUILD=$TOP/ort-minimal-build
export DEBIAN_FRONTEND=noninteractive

# --- 1. Tools and header-only dependencies from bookworm -------------------------------------------
# protobuf-compiler 3.21.12 is the same protobuf release ORT pins (v21.12), so we skip building protoc.
# libmsgsl-dev (GSL 4.0) and libboost-dev (for Boost.Mp11) are found by ORT's find_package fallbacks.
apt-get install -y --no-install-recommends build-essential ninja-build patch dpkg-dev ca-certificates \
    python3 python3-venv protobuf-compiler libmsgsl-dev libboost-dev
# ORT 1.21 requires CMake >= 3.28; bookworm ships 3.25, so take CMake from PyPI. build.py's
# reduce_op_kernels.py needs the flatbuffers Python module.
[ -x "$TOP/ortvenv/bin/cmake" ] || python3 -m venv "$TOP/ortvenv"
"$TOP/ortvenv/bin/pip" install -q 'cmake>=3.28,<4' flatbuffers
PY=$TOP/ortvenv/bin/python
CMAKE=$TOP/ortvenv/bin/cmake

# --- 2. Source tarballs from trixie (deb-src) -------------------------------------------------------
# Only the .orig tarballs are needed; apt-get exits non-zero if a .debian.tar is missing, so we just
# check that the orig tarball arrived.
if [ ! -e /etc/apt/sources.list.d/trixie-src.sources ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > /etc/apt/sources.list.d/trixie-src.sources
    apt-get update
fi
mkdir -p "$TOP/ortsrc" "$DEPS"
fetch_orig() {  # fetch_orig DIR SRCPKG -> prints path of the orig tarball
    ( cd "$1" && ls "$2"_*.orig.tar.* >/dev/null 2>&1 || apt-get source --download-only "$2" >/dev/null 2>&1 || true )
    ls "$1/$2"_*.orig.tar.* 2>/dev/null | head -1 | grep . || { echo "cannot fetch $2" >&2; exit 1; }
}
if [ ! -d "$SRC" ]; then
    tar -C "$TOP/ortsrc" -xf "$(fetch_orig "$TOP/ortsrc" onnxruntime)"
fi

# Point ORT's cmake/deps.txt (name;url;sha1) at the local tarballs. The versions match ORT's pins
# (abseil 20240722, re2 2024-07-02, protobuf 21.12, flatbuffers 23.5.26, onnx 1.17.0, json 3.11.3),
# except date (3.0.3 for 3.0.1); eigen is handled below.
DEPS_TXT=$SRC/cmake/deps.txt
[ -e "$DEPS_TXT.orig" ] || cp "$DEPS_TXT" "$DEPS_TXT.orig"
cp -p "$DEPS_TXT.orig" "$DEPS_TXT"
use_local() {  # use_local DEPNAME SRCPKG
    local f; f=$(fetch_orig "$DEPS" "$2")
    sed -i "s|^$1;[^;]*;.*|$1;$f;$(sha1sum "$f" | cut -d' ' -f1)|" "$DEPS_TXT"
}
use_local abseil_cpp  abseil
use_local re2         re2
use_local protobuf    protobuf
use_local date        howardhinnant-date
use_local json        nlohmann-json3
use_local flatbuffers flatbuffers
use_local onnx        onnx          # a minimal build only compiles onnx's .proto files

# Eigen: ORT 1.21 pins a commit of the 3.4 branch that adds ArrayBase::min/max<NaNPropagation>(),
# which the 3.4.0 release lacks (element_wise_ops.cc fails to compile). Unpack Debian's 3.4.0, add
# those two member templates (the scalar_min_op/scalar_max_op functors in 3.4.0 already take the
# NaN mode), and hand the tree to FetchContent via FETCHCONTENT_SOURCE_DIR_EIGEN.
EIGEN=$DEPS/eigen-3.4.0
if [ ! -e "$EIGEN/.nan_minmax_added" ]; then
    rm -rf "$EIGEN" && tar -C "$DEPS" -xf "$(fetch_orig "$DEPS" eigen3)"
    cat >> "$EIGEN/Eigen/src/plugins/ArrayCwiseBinaryOps.h" <<'EOT'

// Added for ONNX Runtime: coefficient-wise min/max with an explicit NaN propagation mode,
// e.g. a.template min<PropagateNaN>(b) or a.template max<PropagateNaN>(scalar).
#define ORT_EIGEN_NAN_MINMAX(NAME, FUNCTOR) \
  template<int NaNPropagation, typename OtherDerived> EIGEN_DEVICE_FUNC EIGEN_STRONG_INLINE \
  const CwiseBinaryOp<internal::FUNCTOR<Scalar, Scalar, NaNPropagation>, const Derived, const OtherDerived> \
  (NAME)(const EIGEN_CURRENT_STORAGE_BASE_CLASS<OtherDerived> &other) const { \
    return CwiseBinaryOp<internal::FUNCTOR<Scalar, Scalar, NaNPropagation>, const Derived, \
                         const OtherDerived>(derived(), other.derived()); \
  } \
  template<int NaNPropagation> EIGEN_DEVICE_FUNC EIGEN_STRONG_INLINE \
  const CwiseBinaryOp<internal::FUNCTOR<Scalar, Scalar, NaNPropagation>, const Derived, \
                      const CwiseNullaryOp<internal::scalar_constant_op<Scalar>, PlainObject> > \
  (NAME)(const Scalar &other) const { \
    return this->template NAME<NaNPropagation>(Derived::PlainObject::Constant(rows(), cols(), other)); \
  }
ORT_EIGEN_NAN_MINMAX(min, scalar_min_op)
ORT_EIGEN_NAN_MINMAX(max, scalar_max_op)
#undef ORT_EIGEN_NAN_MINMAX
EOT
    touch "$EIGEN/.nan_minmax_added"
fi

# SafeInt is a single header. Its trixie source tarball is not on the mirror, but the binary
# libsafeint-dev .deb is: fetch it with a private apt index (leaves the system's apt config alone).
if [ ! -e "$DEPS/safeint/usr/include/safeint/SafeInt.hpp" ]; then
    A=$DEPS/apt-trixie; mkdir -p "$A/lists/partial" "$A/parts"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > "$A/parts/trixie.sources"
    APTO=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$A/parts" -o Dir::State::Lists="$A/lists"
          -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    apt-get "${APTO[@]}" update
    ( cd "$A" && apt-get "${APTO[@]}" download libsafeint-dev )
    dpkg-deb -x "$A"/libsafeint-dev_*.deb "$DEPS/safeint"
fi

# utf8_range is only needed by protobuf >= 22; ORT still asks for it, so satisfy find_package with
# an empty package config.
mkdir -p "$DEPS/utf8_range_stub"
: > "$DEPS/utf8_range_stub/utf8_range-config.cmake"

# Optional, x86-64 only: a minimal build compiles MLAS's AVX-512 kernels but never dispatches to them
# (platform.cpp/convsym.cpp guard that with ORT_MINIMAL_BUILD), so int8 MatMuls use the AVX2 u8s8
# kernel, whose 16-bit pair sums saturate on full-range int8 weights. Results then differ from the
# full ORT package on AVX512-VNNI CPUs. X86_AVX512=1 lifts the guard (+~250 KB) to get matching numbers.
for f in onnxruntime/core/mlas/lib/platform.cpp onnxruntime/core/mlas/lib/convsym.cpp; do
    [ -e "$SRC/$f.orig" ] || cp "$SRC/$f" "$SRC/$f.orig"
    cp -p "$SRC/$f.orig" "$SRC/$f"
    if [ "${X86_AVX512:-0}" = 1 ]; then
        sed -i 's|^#if !defined(ORT_MINIMAL_BUILD)|#if 1  // X86_AVX512=1: keep AVX-512 dispatch in the minimal build|' "$SRC/$f"
    fi
done

# --- 3. Build ---------------------------------------------------------------------------------------
# build.py runs reduce_op_kernels.py on the config (it rewrites the kernel registration files into
# the build dir), then runs cmake with onnxruntime_MINIMAL_BUILD=ON / onnxruntime_REDUCED_OPS_BUILD=ON.
# cpuinfo is turned off (not needed on x86-64; MLAS does its own CPUID detection).
# (--skip_tests only skips running tests; onnxruntime_BUILD_UNIT_TESTS=OFF avoids fetching googletest.)
cd "$SRC"
time nice -n 10 "$PY" tools/ci_build/build.py \
    --build_dir "$BUILD" --config MinSizeRel \
    --minimal_build --include_ops_by_config "$CONFIG" --disable_ml_ops \
    --build_shared_lib --skip_tests --skip_submodule_sync --allow_running_as_root \
    --parallel "$JOBS" --cmake_generator Ninja --cmake_path "$CMAKE" --path_to_protoc_exe /usr/bin/protoc \
    --cmake_extra_defines onnxruntime_BUILD_UNIT_TESTS=OFF onnxruntime_ENABLE_CPUINFO=OFF \
        "safeint_SOURCE_DIR=$DEPS/safeint/usr/include/safeint" "utf8_range_DIR=$DEPS/utf8_range_stub" \
        "FETCHCONTENT_SOURCE_DIR_EIGEN=$EIGEN"

LIB=$BUILD/MinSizeRel
strip --strip-unneeded -o "$LIB/libonnxruntime.stripped.so" "$LIB/libonnxruntime.so"
ls -l "$LIB"/libonnxruntime.so* "$LIB/libonnxruntime.stripped.so"

# --- 4. Test driver ---------------------------------------------------------------------------------
gcc -O2 -std=c11 -o "$HERE/run_ort" "$HERE/run_ort.c" \
    -I"$SRC/include/onnxruntime/core/session" -L"$LIB" -lonnxruntime -Wl,-rpath,"$LIB" -lm
echo "built $HERE/run_ort (usage: run_ort model.ort ids.txt [timing_runs])"
