#!/usr/bin/env bash
# Runs the standard benchmark set and writes everything into one folder:
#   bench-results/<UTC timestamp>/{host.txt, probe.json, probe.txt, peer.json, bench.json, bench.txt, bench.svg}
# Usage: scripts/bench.sh [--quick] [extra `vmm-harness bench` options]
# Env: SWIFT_SCRATCH (a --scratch-path for swift build), BENCH_OUT (the results folder), NO_PEER=1 (skip Unicorn).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=()
if [ -n "${SWIFT_SCRATCH:-}" ]; then scratch=(--scratch-path "$SWIFT_SCRATCH"); fi
quick=()
peer_quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); peer_quick=(--quick); shift; fi

swift build -c release "${scratch[@]}" --product vmm-harness >&2
bin="$(swift build -c release "${scratch[@]}" --show-bin-path)/vmm-harness"

out="${BENCH_OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "uname: $(uname -a)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "cpus: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  echo "load: $(cat /proc/loadavg)"
  echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)"
  echo "kvm modules: $(grep -E '^kvm' /proc/modules | cut -d' ' -f1 | tr '\n' ' ')"
} > "$out/host.txt"
"$bin" probe --json > "$out/probe.json" || true
"$bin" probe > "$out/probe.txt" || true

peer=()
if [ -z "${NO_PEER:-}" ] && command -v python3 >/dev/null; then
  echo "bench.sh: Unicorn peer" >&2
  if python3 scripts/unicorn-peer.py "${peer_quick[@]}" > "$out/peer.json"; then peer=(--peer "$out/peer.json"); fi
fi

echo "bench.sh: vmm-harness bench (progress on stderr)" >&2
"$bin" bench "${quick[@]}" "${peer[@]}" --progress --json-output "$out/bench.json" --svg "$out/bench.svg" "$@" | tee "$out/bench.txt"
echo "bench.sh: results in $out" >&2
