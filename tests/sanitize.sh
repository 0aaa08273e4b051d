#!/usr/bin/env bash
# The launch-pool stress and thread tests (pytest -m sanitize) under two
# sanitizer builds of gpunet._C_sim, each configured into its own build folder
# (only _C_sim is built: the race checker's _C_simcheck excludes both):
#   asan  AddressSanitizer + UBSan on the kernels (-DGPUNET_SIM_ASAN=ON)
#   tsan  ThreadSanitizer with its runtime (-DGPUNET_SIM_TSAN=ON): races
#         between host threads and the launch pool's workers
# Python itself is not instrumented: the sanitizer's runtime is preloaded and
# GPUNET_SIM_MODULE points gpunet at the build; the tests' subprocesses
# inherit both. Any report fails the run (halt_on_error / exitcode).
#
# Usage: tests/sanitize.sh [asan] [tsan]   (default: both)
# Environment: PYTHON (default .venv/bin/python), SANITIZE_BUILD (default
# build/sanitize), CXX (CMake's compiler; its sanitizer runtimes are preloaded),
# CMAKE_BUILD_PARALLEL_LEVEL (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$("${PYTHON:-.venv/bin/python}" -c 'import sys; print(sys.executable)')"
BUILD="${SANITIZE_BUILD:-build/sanitize}"
CXX="${CXX:-c++}"
CMAKE="$(PATH="$(dirname "$PY"):$PATH" command -v cmake)"
PYBIND="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')"
SUPP="$PWD/tests/sanitize.supp"

sanitizers=("$@")
[ ${#sanitizers[@]} -gt 0 ] || sanitizers=(asan tsan)
for s in "${sanitizers[@]}"; do
  mkdir -p "$BUILD/$s"
  dir="$(cd "$BUILD/$s" && pwd)"
  echo "== $s: building gpunet._C_sim in $dir"
  "$CMAKE" -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DGPUNET_BUILD_CUDA=OFF "-DGPUNET_SIM_${s^^}=ON" \
    "-DPython_EXECUTABLE=$PY" "-Dpybind11_DIR=$PYBIND" "-DGPUNET_OUTPUT_DIR=$dir/lib" >/dev/null
  "$CMAKE" --build "$dir" --target _C_sim --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >/dev/null
  module="$(ls "$dir"/lib/_C_sim*.so)"
  # with a planted hazard of csrc/kernels/racecheck.cu the sanitizer must report
  case $s in
    asan) preload="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
          vars=(ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
          planted="out = np.zeros(64, np.float32)  # written at out[64], past the end of its allocation
s._race_probe('past_the_end', True, np.ones(4096, np.float32), out, 0)" ;;
    tsan) preload="$("$CXX" -print-file-name=libtsan.so)"
          vars=(TSAN_OPTIONS="halt_on_error=1:exitcode=66:suppressions=$SUPP")
          planted="s.set_workers(4)  # blocks on different workers read and write out[0]
for _ in range(20): s._race_probe('cross_block', True, np.ones(4096, np.float32), np.zeros(64, np.float32), 0)" ;;
  esac
  if env LD_PRELOAD="$preload" GPUNET_SIM_MODULE="$module" CUDASIM_QUIET=1 "${vars[@]}" \
      "$PY" -c "import numpy as np; from gpunet import _C_sim as s
$planted" >"$dir/planted.log" 2>&1; then
    echo "$s did not report the planted hazard (see $dir/planted.log)"; exit 1
  fi
  echo "== $s: reports the planted hazard ($(grep -m1 -oE '(AddressSanitizer|ThreadSanitizer): [a-z -]+' "$dir/planted.log"))"
  echo "== $s: pytest -m sanitize with $module"
  env LD_PRELOAD="$preload" GPUNET_SIM_MODULE="$module" CUDASIM_QUIET=1 GPUNET_STRESS_SCALE=0.1 "${vars[@]}" \
    "$PY" -m pytest -q -p no:cacheprovider -m sanitize tests/test_reliability.py
done
