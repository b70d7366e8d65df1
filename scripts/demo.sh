#!/usr/bin/env bash
# Sets up and runs the demo: rebuilds the guest runtime from guest/runtime.S, builds the harness,
# shows what this host's KVM can do, then runs the three-tier scenario on the best backend
# available (KVM if /dev/kvm opens, else the interpreter) with the dispatch trace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-guest.sh
swift build -c release --product vmm-harness
bin=$(swift build -c release --show-bin-path)/vmm-harness
"$bin" probe
echo
"$bin" run --trace guest/scenarios/tiers.S
