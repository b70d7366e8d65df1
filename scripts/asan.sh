#!/usr/bin/env bash
# The whole test suite under AddressSanitizer, in its own build folder (.build-asan) so it never
# disturbs the normal build. Nothing is excluded. Extra arguments go to `swift test`
# (e.g. `scripts/asan.sh --filter Interpreter`). Exits non-zero on a test failure or an ASan report.
set -euo pipefail
cd "$(dirname "$0")/.."
# Leak detection stays off: the Swift runtime's metadata caches and Foundation's singletons are
# never freed and would drown real reports. Leaks of the harness's own resources are checked by
# ResourceLeakTests (`vmm-harness soak`: fds and VmRSS over thousands of cycles).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:halt_on_error=1}"
swift build --build-tests --sanitize=address --scratch-path .build-asan
# The CLI and resource-leak tests run the instrumented binary of this build. Under ASan its
# quarantine keeps freed blocks resident (256 MiB by default), so the leak tests check descriptors
# strictly and VmRSS only loosely, over fewer cycles (each is several times slower here).
export VMM_HARNESS_BINARY="$PWD/.build-asan/debug/vmm-harness"
export VMM_HARNESS_LEAK_RSS_SLACK_KIB="${VMM_HARNESS_LEAK_RSS_SLACK_KIB:-524288}"
export VMM_HARNESS_LEAK_CYCLES="${VMM_HARNESS_LEAK_CYCLES:-2000}"
swift test --skip-build --sanitize=address --scratch-path .build-asan "$@"
