#!/usr/bin/env bash
# make sanitize: the C++ kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# 1. Builds pykernels._C with -fsanitize=address,undefined -fno-omit-frame-pointer -g into its
#    own build dir (build/asan/cmake), installed editable into its own virtual environment
#    (build/asan/venv). That venv sees .venv's packages (torch, numpy, pytest, hypothesis,
#    scikit-build-core) through a .pth line but not .venv's editable pykernels: the normal build
#    in .venv and build/<wheel tag> is left alone. Rebuilds are incremental.
# 2. Runs the tests that reach the C++ kernels (everything but the Triton interpreter: the
#    "cpp" backend, the modules and models, pykernels.numpy, compile, distributed) with gcc's
#    libasan preloaded into Python, then the fuzz slice once more per other ISA
#    (PYKERNELS_ISA=avx2, generic) so every SIMD path runs instrumented.
# 3. Counts the sanitizer reports (written to build/asan/reports/) and fails on any.
#
# Usage: tools/sanitize.sh [extra pytest args]      (make sanitize)
#   SANITIZE_ISAS="avx2 generic"   the extra ISA passes (empty: none)
#   SANITIZE_TESTS="tests"         what pytest runs on the default ISA
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BASE_PY=${BASE_PY:-$ROOT/.venv/bin/python}
OUT=$ROOT/build/asan
VENV=$OUT/venv
REPORTS=$OUT/reports
ISAS=${SANITIZE_ISAS-"avx2 generic"}
TESTS=${SANITIZE_TESTS:-tests}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

start=$(date +%s)
[ -x "$BASE_PY" ] || { echo "sanitize: $BASE_PY not found (run make venv first)" >&2; exit 2; }

LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
# detect_leaks=0: CPython and torch keep allocations alive until exit by design.
# halt_on_error: the first report ends the process (pytest then fails, and the report is kept).
run() {
  env LD_PRELOAD="$LIBASAN $LIBUBSAN" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$REPORTS/asan:allocator_may_return_null=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan" \
    PYTHONFAULTHANDLER=1 "$@"
}

# ---- the instrumented build ----------------------------------------------------------------
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
site_base=$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site_asan=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site_base" > "$site_asan/zz_base_venv.pth"  # torch & co. (a plain path: .venv's .pth hooks do not run)
echo "sanitize: building pykernels._C with $SAN into $OUT/cmake"
# RelWithDebInfo: -g for the report stacks (the kernels keep their own -O3 from CMakeLists.txt)
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e . \
  -C build-dir="$OUT/cmake" \
  -C cmake.build-type=RelWithDebInfo \
  -C "cmake.define.CMAKE_CXX_FLAGS=$SAN" \
  -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined" \
  -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined"
so=$(run "$VENV/bin/python" -c 'import pykernels._C as c; print(c.__file__)' || true)
case "$so" in
  "$VENV"/*) ;;
  *) echo "sanitize: pykernels._C resolves to '$so', not the instrumented build" >&2; exit 2 ;;
esac
if [ "$(nm -D "$so" | grep -c __asan_report)" = 0 ] || [ "$(nm -D "$so" | grep -c __ubsan_handle)" = 0 ]; then
  echo "sanitize: $so is not instrumented" >&2; exit 2
fi
build_done=$(date +%s)

# ---- the runs ------------------------------------------------------------------------------
status=0
echo "sanitize: pytest $TESTS -k 'not triton' (ISA: default)"
run "$VENV/bin/python" -m pytest -q -p no:cacheprovider -k "not triton" "$TESTS" "$@" || status=$?
for isa in $ISAS; do
  echo "sanitize: pytest tests/test_fuzz.py -k cpp (PYKERNELS_ISA=$isa)"
  PYKERNELS_ISA=$isa run "$VENV/bin/python" -m pytest -q -p no:cacheprovider -k cpp \
    tests/test_fuzz.py || status=$?
done
end=$(date +%s)

# ---- the reports ---------------------------------------------------------------------------
n_asan=$(cat "$REPORTS"/asan.* 2>/dev/null | grep -c "ERROR: AddressSanitizer" || true)
n_ubsan=$(cat "$REPORTS"/asan.* "$REPORTS"/ubsan.* 2>/dev/null | grep -c "runtime error:" || true)
for f in "$REPORTS"/*; do
  [ -e "$f" ] || continue
  echo "==== $f"; cat "$f"
done
echo "sanitize: $n_asan AddressSanitizer reports, $n_ubsan UndefinedBehaviorSanitizer reports;" \
  "build $((build_done - start)) s, tests $((end - build_done)) s, total $((end - start)) s" \
  "(reports in $REPORTS)"
if [ "$n_asan" != 0 ] || [ "$n_ubsan" != 0 ]; then
  exit 1
fi
exit "$status"
