import Foundation
import Testing
@testable import VMMHarness

/// Creates, runs and drops many machines and checks that neither file descriptors nor resident
/// memory grow: every KVM fd (device, VM, vCPU), the kvm_run mapping, the guest memory mapping
/// and the interpreter's buffers must be released when their owners go away.
///
/// `VMM_HARNESS_LEAK_CYCLES` sets the number of cycles per test (default 2,000: 10,000 KVM cycles
/// take over a minute on this project's PVM hosts, and the suite runs twice in scripts/test.sh).
/// docs/hardening.md has the 10,000-cycle numbers.
@Suite("Resource leaks", .serialized)
struct ResourceLeakTests {
    /// Cycles for one test: the environment variable, else `fallback`.
    static func cycles(default fallback: Int) -> Int {
        ProcessInfo.processInfo.environment["VMM_HARNESS_LEAK_CYCLES"].flatMap(Int.init) ?? fallback
    }

    /// Open KVM file descriptors of this process: /dev/kvm and the VM and vCPU descriptors
    /// (anon_inode:kvm-vm, kvm-vcpu). Only these belong to the code under test; counting every
    /// descriptor would see pipes and files of other tests running in parallel.
    static func openDescriptors() -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return names.filter { name in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)") else {
                return false
            }
            return target == "/dev/kvm" || target.hasPrefix("anon_inode:kvm")
        }.count
    }

    /// Resident set size in KiB (VmRSS of /proc/self/status).
    static func residentKiB() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// Runs `cycles` cycles of `body` after a warm-up of `warmUp` cycles and checks the growth.
    /// The memory slack covers allocator caches, lazily created runtime metadata and what tests
    /// running in parallel allocate meanwhile; a leak of one guest memory per cycle (about 80 KiB
    /// touched each time: runtime, host-area stubs, image, stack) would exceed it several times.
    static func measure(_ name: String, cycles: Int, warmUp: Int = 200, memorySlackKiB: Int = 32 * 1024,
                        _ body: () throws -> Void) throws {
        for _ in 0..<warmUp { try body() }
        let fd0 = openDescriptors()
        let rss0 = residentKiB()
        let start = Date()
        for _ in 0..<cycles { try body() }
        let seconds = Date().timeIntervalSince(start)
        let fd1 = openDescriptors()
        let rss1 = residentKiB()
        print("[leak] \(name): \(cycles) cycles in \(String(format: "%.1f", seconds)) s; fds \(fd0) -> \(fd1); VmRSS \(rss0) -> \(rss1) KiB")
        #expect(fd1 <= fd0, "\(name): file descriptors grew from \(fd0) to \(fd1) over \(cycles) cycles")
        #expect(rss1 - rss0 <= memorySlackKiB, "\(name): VmRSS grew by \(rss1 - rss0) KiB over \(cycles) cycles")
    }

    /// A guest that halts at once, with a fault on the way so the stub path runs too (UD2 with a
    /// handler that skips it, then HLT).
    static let image = GuestImage(name: "leak", bytes: [0x0F, 0x0B, 0xF4])

    static func skipUD2() -> ClosureFaultHandling {
        ClosureFaultHandling { event, frame in
            guard event.vector == 6 else { return false }
            frame.eip &+= 2
            return true
        }
    }

    static func runOnce(_ choice: BackendChoice) throws {
        var options = MachineOptions()
        options.memorySize = 2 << 20
        options.timeout = nil
        let machine = try Harness.makeMachine(image: image, choice: choice, options: options, faultHandling: skipUD2())
        let report = machine.run()
        guard report.exit.reason == .halt else {
            throw HarnessError.guestProtocol("leak cycle ended with \(report.exit.reason): \(report.exit.message)")
        }
    }

    @Test("interpreter: create, run, destroy without fd or memory growth")
    func interpreterCycles() throws {
        try Self.measure("interpreter", cycles: Self.cycles(default: 2_000)) { try Self.runOnce(.interpreter) }
    }

    @Test("KVM: create, run, destroy without fd or memory growth",
          .enabled(if: TestSupport.kvmUsable, "KVM not usable: \(TestSupport.kvmSkipReason)"))
    func kvmCycles() throws {
        try Self.measure("kvm", cycles: Self.cycles(default: 2_000), warmUp: 50) { try Self.runOnce(.kvm) }
    }

    @Test("KVM backend alone: VM and vCPU over fresh memory, HLT, dropped",
          .enabled(if: TestSupport.kvmUsable, "KVM not usable: \(TestSupport.kvmSkipReason)"))
    func kvmBackendCycles() throws {
        let layout = try RuntimeImage.layout()
        try Self.measure("kvm-backend", cycles: Self.cycles(default: 2_000), warmUp: 50) {
            let memory = try GuestMemory(size: 2 << 20)
            try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
            try memory.writeBytes(MemoryMap.imageBase, [0xF4])
            let backend = try KVMBackend(memory: memory)
            try backend.writeState(Machine.initialState(entry: MemoryMap.imageBase, layout: layout))
            let exit = try backend.run(instructionBudget: 0)
            guard exit == .halt else { throw HarnessError.guestProtocol("KVM backend cycle ended with \(exit)") }
        }
    }
}
