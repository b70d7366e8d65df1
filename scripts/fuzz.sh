#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (the runtime ships with the Swift toolchain's clang;
# nothing is downloaded or installed) of four targets: the interpreter, the Machine's fault/resume
# path, the KVM backend's kvm_run exit decoder (kvm-exit) and the guest DDB parser (ddb).
#
#   scripts/fuzz.sh [SECONDS|COUNT] [TARGET]   run TARGET (interpreter|machine|kvm-exit|ddb|both|all;
#                                              default both = interpreter and machine)
#                                              for SECONDS (e.g. 600s, default 300s) or COUNT inputs
#   scripts/fuzz.sh --ci                       60 s each for interpreter and machine, 20 s each for
#                                              kvm-exit and ddb; exits non-zero on a crash/hang/leak
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
  for f in InterpreterFuzz MachineFuzz KVMExitFuzz DDBFuzz; do
    [ -x "$SCRATCH/release/$f" ] || { echo "fuzz.sh: build produced no $f" >&2; exit 2; }
  done
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
elif t == "kvm-exit":
    # struct kvm_run: exit_reason at 8, the exit union at 32 (see linux/kvm.h); I/O data on page 2.
    def run(reason, union=b"", size=4096, tail=b""):
        b = bytearray(size)
        b[8:12] = struct.pack("<I", reason)
        b[32:32 + len(union)] = union
        b[4096:4096 + len(tail)] = tail
        return bytes(b)
    io = lambda d, sz, port, count, off=4096: struct.pack("<BBHIQ", d, sz, port, count, off)
    w("out", run(2, io(1, 1, 0x80, 1), 8192, b"\x5a"))
    w("in", run(2, io(0, 4, 0x60, 1), 8192))
    w("rep-insb", run(2, io(0, 1, 0x1234, 5), 8192))
    w("rep-outsw", run(2, io(1, 2, 0x70, 3), 8192, b"\x11\x10\x22\x20\x33\x30"))
    w("io-at-end", run(2, io(1, 4, 0x70, 1024), 8192))
    w("hlt", run(5))
    w("mmio", run(6, struct.pack("<Q8sIB", 0xFFFFFFFC, b"\x01\x02\x03\x04\0\0\0\0", 4, 0)))
    w("emulation-failure", run(17, struct.pack("<II", 1, 4) + struct.pack("<Q", 1) + bytes([2, 0xCD, 0x30]) + bytes(5) + bytes(16)))
    w("debug-step", run(4, struct.pack("<IIQQQ", 1, 0, 0x100004, 0xFFFF4FF0, 0x400)))
    w("debug-bp", run(4, struct.pack("<IIQQQ", 1, 0, 0x100004, 0xFFFF0FF1, 0x401)))
    w("fail-entry", run(9, struct.pack("<QI", 0x21, 0)))
elif t == "ddb":
    ddb = bytearray(0x50)
    ddb[6:8] = struct.pack("<H", 0x7A5F)
    ddb[8], ddb[9] = 4, 0
    ddb[0x0C:0x14] = b"SAMPLE  "
    ddb[0x14:0x1C] = struct.pack("<II", 0x8000000, 0x101000)
    w("ddb", struct.pack("<IhB", 0x1000, 0, 0) + bytes(ddb))
    w("ddb-at-end", struct.pack("<IhB", 0xFFD0, 0, 0) + bytes(ddb))
    w("ddb-before", struct.pack("<IhB", 0x20, -0x40, 0) + bytes(ddb))
    w("ddb-raw", struct.pack("<IhB", 0x100000, 0, 1) + bytes(ddb))
    w("bad-name", struct.pack("<IhB", 0x1000, 0, 0) + bytes(0x0C) + b"\x01BADNAME")
else:
    edits = bytes([16, 2, 0, 0, 0]) * 8
    w("ud2-skip", bytes([0, 0]) + edits + bytes(32) + b"\x0f\x0b\xf4")
    w("gp-bad-cs", bytes([0, 0]) + bytes([8, 0x99, 0, 0, 0]) * 8 + bytes(32) + b"\x0f\x0b\xf4")
    w("vmm-ud2", bytes([1, 0]) + edits + bytes(32) + b"\x0f\x0b\xf4")
    w("ring3", bytes([0, 0]) + edits + bytes(32) + b"\xb8\x01\x00\x00\x00\xb9\x20\x00\x10\x00\xba\x00\x00\x09\x00\xbe\x02\x02\x00\x00\xe6\xf0" + b"\x90" * 10 + b"\xfa\xf4")
PY
}

binary() {
  case $1 in
    interpreter) echo "$SCRATCH/release/InterpreterFuzz";;
    machine) echo "$SCRATCH/release/MachineFuzz";;
    kvm-exit) echo "$SCRATCH/release/KVMExitFuzz";;
    ddb) echo "$SCRATCH/release/DDBFuzz";;
  esac
}

# Largest input per target: a kvm_run mapping is 3 pages; the others read a few KiB at most.
max_len() { case $1 in kvm-exit) echo 12288;; ddb) echo 600;; *) echo 4200;; esac; }

run_target() {  # target, libFuzzer limit flag
  local t=$1 limit=$2 art=$ROOT/fuzz-artifacts/$1
  mkdir -p "$art"
  seed "$t"
  echo "== fuzz $t ($limit) =="
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a runaway allocation is a finding.
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:malloc_context_size=0}" "$(binary "$t")" "$limit" -timeout=10 -rss_limit_mb=4096 \
     -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$art/" "$ROOT/fuzz-corpus/$t"
}

targets() {
  case ${1:-both} in
    both) echo interpreter machine;;
    all) echo interpreter machine kvm-exit ddb;;
    interpreter|machine|kvm-exit|ddb) echo "$1";;
    *) echo "fuzz.sh: unknown target $1" >&2; exit 2;;
  esac
}

case "${1:-}" in
  --ci)
    build
    for t in interpreter machine; do run_target "$t" -max_total_time=60; done
    for t in kvm-exit ddb; do run_target "$t" -max_total_time=20; done ;;
  --replay)
    shift
    build
    t=interpreter
    files=()
    for a in "$@"; do case $a in interpreter|machine|kvm-exit|ddb) t=$a;; *) files+=("$a");; esac; done
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" "$(binary "$t")" -runs=1 "${files[@]}" ;;
  *)
    arg=${1:-300s}
    if [[ $arg =~ ^([0-9]+)s$ ]]; then limit=-max_total_time=${BASH_REMATCH[1]}
    elif [[ $arg =~ ^[0-9]+$ ]]; then limit=-runs=$arg
    else echo "usage: scripts/fuzz.sh [SECONDS s|COUNT] [interpreter|machine|kvm-exit|ddb|both|all] | --ci | --replay FILE... [TARGET]" >&2; exit 2; fi
    build
    for t in $(targets "${2:-both}"); do run_target "$t" "$limit"; done ;;
esac
