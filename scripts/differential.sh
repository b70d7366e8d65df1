#!/bin/sh
# Differential run: COUNT generated programs (default 3000) from SEED (default 0x5EEDD1FF) on KVM
# and on the interpreter, compared instruction by instruction where they disagree.
# Prints programs/s, the opcodes KVM left to the instruction assist, and every mismatch with its
# seed and first differing instruction. Needs a /dev/kvm that opens (the test is skipped otherwise).
#   scripts/differential.sh [COUNT] [SEED]
# SCRATCH=path overrides the build folder (default .build).
set -eu
cd "$(dirname "$0")/.."
COUNT="${1:-3000}"
SEED="${2:-0x5EEDD1FF}"
SCRATCH="${SCRATCH:-.build}"
export VMM_HARNESS_DIFF_COUNT="$COUNT" VMM_HARNESS_DIFF_SEED="$SEED"
swift build --build-tests --scratch-path "$SCRATCH" >/dev/null
swift test --skip-build --scratch-path "$SCRATCH" --filter 'DifferentialRandomTests/kvmAndInterpreterAgreeOnRandomPrograms' 2>&1 \
    | grep -v '^\[' | grep -E 'differential:|seed 0x|^  |✘|✔|skipped'
