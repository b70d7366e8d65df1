#!/usr/bin/env bash
# Coverage-guided fuzzing of the interpreter and of the Machine's fault/resume path with libFuzzer
# (the runtime ships with the Swift toolchain's clang; nothing is downloaded or installed).
#
#   scripts/fuzz.sh [SECONDS|COUNT] [TARGET]   run TARGET (interpreter|machine|both, default both)
#                                              for SECONDS (e.g. 600s, default 300s) or COUNT inputs
#   scripts/fuzz.sh --ci                       60 s per target, exits non-zero on a crash/hang/leak
#   scripts/fuzz.sh --replay FILE... [TARGET]  runs saved inputs once (reproducers)
#
# The corpus lives in fuzz-corpus/<target> (ignored by git; seeds are regenerated each run).
# Crash and timeout reproducers are written to fuzz-artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$ROOT/.build-fuzzer
SWIFTC=$(readlink -f "$(command -v swiftc)")
RT=$(ls -d "$(dirname "$SWIFTC")"/../lib/clang/*/lib/linux 2>/dev/null | head -1 || true)
FUZZLIB="$RT/libclang_rt.fuzzer-x86_64.a"
[ -f "$FUZZLIB" ] || { echo "fuzz.sh: libFuzzer runtime not found at $FUZZLIB" >&2; exit 2; }

# AddressSanitizer plus edge coverage with inline 8-bit counters and a PC table; libFuzzer is
# linked by hand. (`-sanitize=fuzzer` also adds compare tracing to every loop of the interpreter,
# which made the interpreter target several times slower for no new coverage.)
build() {
  (cd Fuzz && swift build -c release --scratch-path "$SCRATCH" \
     -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table \
     -Xswiftc -parse-as-library -Xlinker "$FUZZLIB" -Xlinker -lstdc++ 2>&1 \
     | grep -v "Cannot export local symbol" ) || { echo "fuzz.sh: build failed" >&2; exit 2; }
  [ -x "$SCRATCH/release/InterpreterFuzz" ] && [ -x "$SCRATCH/release/MachineFuzz" ] \
    || { echo "fuzz.sh: build produced no fuzzers" >&2; exit 2; }
}

# Seeds: a few hand-made inputs per target, so a short CI run starts past the trivial states.
seed() {
  local t=$1 dir=$ROOT/fuzz-corpus/$1
  mkdir -p "$dir"
  python3 - "$t" "$dir" <<'PY' 2>/dev/null || true
import os, struct, sys
t, d = sys.argv[1], sys.argv[2]
def w(name, b): open(os.path.join(d, "seed-" + name), "wb").write(b)
if t == "interpreter":
    hdr = lambda mode, ctl=0, efl=0x202: bytes([mode, ctl]) + struct.pack("<I", efl) + bytes(32) + bytes(8) + bytes([0, 0x21])
    w("hlt", hdr(0) + b"\xf4")
    w("ud2", hdr(0) + b"\x0f\x0b")
    w("ring3-cli", hdr(1) + b"\xfa\xf4")
    w("v86-int", hdr(2) + b"\xcd\x21\xf4")
    w("paging-write", hdr(4) + b"\xc7\x05\x00\x00\x10\x00\x90\x90\x90\x90\xf4")
    w("movss", hdr(0) + b"\x66\xb8\x10\x00\x8e\xd0\xf4")
    w("irq", hdr(0x40, 0, 0x202) + b"\xfb" + b"\x90" * 8 + b"\xeb\xfe")
else:
    edits = bytes([16, 2, 0, 0, 0]) * 8
    w("ud2-skip", bytes([0, 0]) + edits + bytes(32) + b"\x0f\x0b\xf4")
    w("gp-bad-cs", bytes([0, 0]) + bytes([8, 0x99, 0, 0, 0]) * 8 + bytes(32) + b"\x0f\x0b\xf4")
    w("vmm-ud2", bytes([1, 0]) + edits + bytes(32) + b"\x0f\x0b\xf4")
    w("ring3", bytes([0, 0]) + edits + bytes(32) + b"\xb8\x01\x00\x00\x00\xb9\x20\x00\x10\x00\xba\x00\x00\x09\x00\xbe\x02\x02\x00\x00\xe6\xf0" + b"\x90" * 10 + b"\xfa\xf4")
PY
}

binary() { case $1 in interpreter) echo "$SCRATCH/release/InterpreterFuzz";; machine) echo "$SCRATCH/release/MachineFuzz";; esac; }

run_target() {  # target, libFuzzer limit flag
  local t=$1 limit=$2 art=$ROOT/fuzz-artifacts/$1
  mkdir -p "$art"
  seed "$t"
  echo "== fuzz $t ($limit) =="
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a runaway allocation is a finding.
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:malloc_context_size=0}" "$(binary "$t")" "$limit" -timeout=10 -rss_limit_mb=4096 \
     -max_len=4200 -print_final_stats=1 -artifact_prefix="$art/" "$ROOT/fuzz-corpus/$t"
}

targets() { case ${1:-both} in both) echo interpreter machine;; interpreter|machine) echo "$1";; *) echo "fuzz.sh: unknown target $1" >&2; exit 2;; esac; }

case "${1:-}" in
  --ci)
    build
    for t in interpreter machine; do run_target "$t" -max_total_time=60; done ;;
  --replay)
    shift
    build
    t=interpreter
    files=()
    for a in "$@"; do case $a in interpreter|machine) t=$a;; *) files+=("$a");; esac; done
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" "$(binary "$t")" -runs=1 "${files[@]}" ;;
  *)
    arg=${1:-300s}
    if [[ $arg =~ ^([0-9]+)s$ ]]; then limit=-max_total_time=${BASH_REMATCH[1]}
    elif [[ $arg =~ ^[0-9]+$ ]]; then limit=-runs=$arg
    else echo "usage: scripts/fuzz.sh [SECONDS s|COUNT] [interpreter|machine|both] | --ci | --replay FILE..." >&2; exit 2; fi
    build
    for t in $(targets "${2:-both}"); do run_target "$t" "$limit"; done ;;
esac
