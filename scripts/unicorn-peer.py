#!/usr/bin/env python3
"""Peer measurement for `vmm-harness bench`: the same UD2 fault loop and ALU loop in Unicorn.

Unicorn (QEMU's TCG in a library) runs the guest in UC_MODE_32 with flat segments. The fault loop
is the bench's own (`mov ecx, n; loop: ud2; dec ecx; jnz loop; hlt`); UD2 raises #UD, which Unicorn
2 reports to a UC_HOOK_INSN_INVALID hook (older versions: UC_HOOK_INTR, interrupt 6) with EIP at
the UD2. The hook advances EIP by 2 and
returns; Unicorn continues. Each interval between consecutive hook calls (time.perf_counter_ns,
CLOCK_MONOTONIC on Linux) is one round trip, as in the bench. The driver is Python, so the figure
includes the interpreter's cost of entering the hook: it is a peer, not a floor.

The ALU loop is the bench's ten-instruction loop; instructions/s = iterations * 10 / wall time of
emu_start.

Prints one JSON object (the bench's PeerResult) on stdout. Installs unicorn with pip if missing.
"""
import argparse
import json
import subprocess
import sys
import time


def ensure_unicorn():
    try:
        import unicorn  # noqa: F401
    except ImportError:
        print("unicorn-peer: installing unicorn with pip", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "unicorn"], check=True)


def le32(v):
    return list(int(v & 0xFFFFFFFF).to_bytes(4, "little"))


BASE = 0x100000
DATA = 0x200000
STACK = 0x80000


def fault_loop(count):
    body = [0x0F, 0x0B, 0x49]  # ud2; dec ecx
    back = -(len(body) + 2)
    return bytes([0xB9] + le32(count) + body + [0x75, back & 0xFF, 0xF4])


def alu_loop(iterations):
    body = [0x01, 0xD8, 0x31, 0xC2, 0x83, 0xEF, 0x03, 0x21, 0xD3] \
        + [0x01, 0x05] + le32(DATA) + [0x8B, 0x2D] + le32(DATA) + [0x0B, 0x15] + le32(DATA + 4) + [0x43, 0x49]
    back = -(len(body) + 2)
    return bytes([0xB9] + le32(iterations) + body + [0x75, back & 0xFF, 0xF4])


def percentile(sorted_samples, p):
    if not sorted_samples:
        return 0
    k = max(0, min(len(sorted_samples) - 1, int(round(p / 100.0 * len(sorted_samples) + 0.5)) - 1))
    return sorted_samples[k]


def make_uc(code):
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
    from unicorn.x86_const import UC_X86_REG_ESP
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 4 << 20)
    uc.mem_write(BASE, code)
    uc.reg_write(UC_X86_REG_ESP, STACK)
    return uc


def round_trips(warmup, iterations):
    from unicorn import UC_HOOK_INSN_INVALID, UC_HOOK_INTR
    from unicorn.x86_const import UC_X86_REG_EIP
    total = warmup + iterations + 1
    uc = make_uc(fault_loop(total))
    stamps = []
    seen = [0]
    other = []

    def on_fault():
        t = time.perf_counter_ns()
        if seen[0] >= warmup:
            stamps.append(t)
        seen[0] += 1
        uc.reg_write(UC_X86_REG_EIP, uc.reg_read(UC_X86_REG_EIP) + 2)

    def on_intr(uc, intno, user):
        if intno != 6:
            other.append(intno)
            uc.emu_stop()
            return
        on_fault()

    def on_invalid(uc, user):
        on_fault()
        return True  # continue at the EIP the hook set

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.hook_add(UC_HOOK_INSN_INVALID, on_invalid)
    uc.emu_start(BASE, 0, count=0)  # runs to HLT (Unicorn stops there)
    if other:
        raise RuntimeError("unexpected interrupt %d" % other[0])
    if seen[0] != total:
        raise RuntimeError("saw %d of %d faults" % (seen[0], total))
    samples = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return {
        "count": len(samples),
        "minNs": samples[0],
        "p50Ns": percentile(samples, 50),
        "p90Ns": percentile(samples, 90),
        "p99Ns": percentile(samples, 99),
        "p999Ns": percentile(samples, 99.9),
        "maxNs": samples[-1],
        "meanNs": sum(samples) / len(samples),
    }


def alu(iterations, runs):
    best = []
    for _ in range(runs):
        uc = make_uc(alu_loop(iterations))
        t0 = time.perf_counter_ns()
        uc.emu_start(BASE, 0, count=0)
        best.append((time.perf_counter_ns() - t0) / 1e9)
    seconds = sorted(best)[len(best) // 2]
    instructions = iterations * 10
    return {"iterations": iterations, "instructionsPerIteration": 10, "instructions": instructions,
            "seconds": seconds, "instructionsPerSecond": instructions / seconds if seconds > 0 else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50000)
    ap.add_argument("--alu-iterations", type=int, default=2000000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.iterations, a.alu_iterations, a.runs = 500, 20000, 1
    out = {"peer": "unicorn"}
    try:
        ensure_unicorn()
        import unicorn
        out["version"] = unicorn.__version__
        out["roundTrip"] = round_trips(max(1, a.iterations // 10), a.iterations)
        out["roundTripNote"] = "UC_HOOK_INSN_INVALID hook in Python; exact percentiles of sorted samples"
        out["alu"] = alu(a.alu_iterations, a.runs)
    except Exception as e:  # report, never crash the bench script
        out["error"] = "%s: %s" % (type(e).__name__, e)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
