#!/usr/bin/env bash
# The test command: the whole suite (KVM tests run where /dev/kvm opens), then the whole suite
# again as on a host without KVM (the device path points nowhere), so the interpreter alone
# proves everything on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/include/linux/kvm.h ]; then
  echo "test.sh: /usr/include/linux/kvm.h missing; installing linux-libc-dev" >&2
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq linux-libc-dev) >&2 || true
  fi
fi
swift build --build-tests
echo "== test suite (KVM where usable, interpreter everywhere) =="
swift test --skip-build
echo "== KVM tests again with registers through ioctls (no kvm_run sync regs) =="
VMM_HARNESS_NO_SYNC_REGS=1 swift test --skip-build --filter 'KVM|ScenarioTests|DifferentialTests|StringIOTests|GuestCallTests'
echo "== test suite as on a host without /dev/kvm (interpreter only) =="
VMM_HARNESS_TEST_NO_KVM=1 VMM_HARNESS_KVM_DEVICE=/nonexistent/kvm swift test --skip-build
