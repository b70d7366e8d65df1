import CKVM
import Foundation
import Testing
@testable import VMMHarness

/// Small guests run straight on a `KVMBackend` (no Machine): the runtime's GDT, IDT and stubs in
/// memory, `code` at the image base, ring 0 with flat segments.
enum KVMGuest {
    static let base = MemoryMap.imageBase
    /// A scratch buffer in the image for string I/O.
    static let buffer = MemoryMap.imageBase + 0x800

    static func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)] }

    /// A backend over fresh memory running `code`.
    static func make(_ code: [UInt8], options: BackendOptions = TestSupport.backendOptions,
                     assist: (any InstructionAssist)? = nil) throws -> KVMBackend {
        let memory = try GuestMemory(size: 2 << 20)
        try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
        try memory.writeBytes(base, code)
        let backend = try KVMBackend(memory: memory, options: options, assist: assist)
        try backend.writeState(Machine.initialState(entry: base, layout: try RuntimeImage.layout()))
        return backend
    }

    /// Runs until HLT (at most `limit` exits), answering every IN with `answer(element)`;
    /// returns the exits before the HLT.
    static func runToHalt(_ backend: KVMBackend, limit: Int = 64, answer: (Int) -> UInt32 = { _ in 0 }) throws -> [GuestExit] {
        var exits: [GuestExit] = []
        var ins = 0
        for _ in 0..<limit {
            let e = try backend.run(instructionBudget: 1 << 20)
            if e == .halt { return exits }
            exits.append(e)
            if case .portIn = e {
                try backend.completePortIn(value: answer(ins))
                ins += 1
            }
        }
        Issue.record("no HLT within \(limit) exits: \(exits)")
        return exits
    }
}

@Suite(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens: \(TestSupport.kvmSkipReason)"))
struct KVMStringIOTests {
    /// mov edi, buffer; mov ecx, 5; mov dx, 1234h; cld; rep insb; hlt
    static let repInsb: [UInt8] = [0xBF] + KVMGuest.le32(KVMGuest.buffer) + [0xB9, 5, 0, 0, 0, 0x66, 0xBA, 0x34, 0x12, 0xFC,
                                                                            0xF3, 0x6C, 0xF4]

    @Test func repInsbFillsMemoryElementByElement() throws {
        let backend = try KVMGuest.make(Self.repInsb)
        var exits: [GuestExit] = []
        var states: [CPUState] = []
        while true {
            let e = try backend.run(instructionBudget: 1 << 20)
            if e == .halt { break }
            exits.append(e)
            states.append(try backend.readState())
            try backend.completePortIn(value: 0xA0 + UInt32(exits.count))   // A1, A2, ... in order
            if exits.count > 10 { break }
        }
        #expect(exits == Array(repeating: .portIn(port: 0x1234, size: 1), count: 5))
        #expect(try backend.memory.readBytes(KVMGuest.buffer, count: 6) == [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0x00])
        let s = try backend.readState()
        #expect(s.edi == KVMGuest.buffer + 5)
        #expect(s.ecx == 0)
        #expect(s.eip == KVMGuest.base + UInt32(Self.repInsb.count))
        // Either one KVM_EXIT_IO with count 5 (KVM's emulator reads ahead; between the elements
        // the state is the exit's) or one exit per element.
        let counts = Set(states.map(\.ecx)).count
        #expect(counts == 1 || counts == 5)
        if TestSupport.host.kvmFlavour == "pvm" {
            #expect(counts == 1 && Set(states.map(\.eip)).count == 1, "this project's PVM hosts batch rep insb")
        }
    }

    /// in al, 60h; hlt
    static let inAL: [UInt8] = [0xE4, 0x60, 0xF4]

    @Test func anAnsweredInIsCompleteAtOnce() throws {
        let backend = try KVMGuest.make(Self.inAL)
        #expect(try backend.run(instructionBudget: 1) == .portIn(port: 0x60, size: 1))
        #expect(try backend.readState().eip == KVMGuest.base)   // the IN waits
        try backend.completePortIn(value: 0x5A)
        // As on the interpreter: AL written and EIP past the IN before the guest runs again, so a
        // state the host writes now keeps them.
        var s = try backend.readState()
        #expect(s.eip == KVMGuest.base + 2 && s.eax & 0xFF == 0x5A)
        s.ebx = 0xB0B0
        try backend.writeState(s)
        #expect(try backend.run(instructionBudget: 1) == .halt)
        let end = try backend.readState()
        #expect(end.eax & 0xFF == 0x5A && end.ebx == 0xB0B0)
        #expect(throws: HarnessError.self) { try backend.completePortIn(value: 0) }
    }

    @Test func aKickWhileKVMFinishesAnInIsKept() throws {
        let backend = try KVMGuest.make(Self.inAL)
        #expect(try backend.run(instructionBudget: 1) == .portIn(port: 0x60, size: 1))
        backend.kick()
        try backend.completePortIn(value: 0x5A)
        #expect(try backend.run(instructionBudget: 1) == .interrupted)
        #expect(try backend.run(instructionBudget: 1) == .halt)
    }

    @Test func anUnansweredInElementIsHandedOutAgain() throws {
        let backend = try KVMGuest.make(Self.repInsb)
        #expect(try backend.run(instructionBudget: 1) == .portIn(port: 0x1234, size: 1))
        #expect(try backend.run(instructionBudget: 1) == .portIn(port: 0x1234, size: 1))
        try backend.completePortIn(value: 0x77)
        let rest = try KVMGuest.runToHalt(backend) { _ in 0x66 }
        #expect(rest.count == 4)
        #expect(try backend.memory.readBytes(KVMGuest.buffer, count: 5) == [0x77, 0x66, 0x66, 0x66, 0x66])
    }

    @Test func repOutsbHandsOutEveryByteInOrder() throws {
        // mov esi, buffer; mov ecx, 4; mov dx, 5678h; cld; rep outsb; hlt
        let code: [UInt8] = [0xBE] + KVMGuest.le32(KVMGuest.buffer) + [0xB9, 4, 0, 0, 0, 0x66, 0xBA, 0x78, 0x56, 0xFC,
                                                                      0xF3, 0x6E, 0xF4]
        let backend = try KVMGuest.make(code)
        try backend.memory.writeBytes(KVMGuest.buffer, [0xA1, 0xB2, 0xC3, 0xD4, 0xE5])
        let exits = try KVMGuest.runToHalt(backend)
        #expect(exits == [0xA1, 0xB2, 0xC3, 0xD4].map { .portOut(port: 0x5678, size: 1, value: $0) })
        let s = try backend.readState()
        #expect(s.esi == KVMGuest.buffer + 4)
        #expect(s.ecx == 0)
    }

    @Test func repOutswHandsOutWords() throws {
        // mov esi, buffer; mov ecx, 3; mov dx, 70h; cld; rep outsw; hlt
        let code: [UInt8] = [0xBE] + KVMGuest.le32(KVMGuest.buffer) + [0xB9, 3, 0, 0, 0, 0x66, 0xBA, 0x70, 0x00, 0xFC,
                                                                      0x66, 0xF3, 0x6F, 0xF4]
        let backend = try KVMGuest.make(code)
        try backend.memory.writeBytes(KVMGuest.buffer, [0x11, 0x10, 0x22, 0x20, 0x33, 0x30, 0x44, 0x40])
        let exits = try KVMGuest.runToHalt(backend)
        #expect(exits == [0x1011, 0x2022, 0x3033].map { .portOut(port: 0x70, size: 2, value: $0) })
        let s = try backend.readState()
        #expect(s.esi == KVMGuest.buffer + 6)
        #expect(s.ecx == 0)
    }
}

@Suite(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens: \(TestSupport.kvmSkipReason)"))
struct KVMRegisterPathTests {
    /// mov eax, 11111111h; out 71h, al; mov ebx, 22222222h; mov ax, 30h; mov ds, ax; out 72h, al;
    /// ud2 (#UD through the runtime's IDT stub, which exits with OUT 86h)
    static let code: [UInt8] = [0xB8, 0x11, 0x11, 0x11, 0x11, 0xE6, 0x71, 0xBB, 0x22, 0x22, 0x22, 0x22,
                                0x66, 0xB8, 0x30, 0x00, 0x8E, 0xD8, 0xE6, 0x72, 0x0F, 0x0B]

    /// The exits and the state after each, the host changing ECX and ESI after the first.
    static func trace(syncRegisters: Bool) throws -> [(GuestExit, CPUState)] {
        var options = TestSupport.backendOptions
        options.kvmSyncRegisters = syncRegisters
        let backend = try KVMGuest.make(code, options: options)
        #expect(backend.vcpu.usesSyncRegisters == (syncRegisters && backend.system.syncRegisterSets & 3 == 3))
        var out: [(GuestExit, CPUState)] = []
        for i in 0..<3 {
            let e = try backend.run(instructionBudget: 1)
            var s = try backend.readState()
            out.append((e, s))
            if i == 0 {
                s.ecx = 0xC0FF_EE00
                s.esi = 0x5151_5151
                try backend.writeState(s)
            }
        }
        return out
    }

    @Test func syncRegistersAndIoctlsSeeTheSameStates() throws {
        let synced = try Self.trace(syncRegisters: true)
        let ioctls = try Self.trace(syncRegisters: false)
        // The #UD stub's OUT sends AL, still 30h from the guest's MOV AX.
        #expect(synced.map(\.0) == [.portOut(port: 0x71, size: 1, value: 0x11), .portOut(port: 0x72, size: 1, value: 0x30),
                                    .portOut(port: Ports.faultBase + 6, size: 1, value: 0x30)])
        #expect(synced.map(\.0) == ioctls.map(\.0))
        for (i, (a, b)) in zip(synced, ioctls).enumerated() {
            #expect(a.1 == b.1, "state after exit \(i) differs: sync regs \(a.1) vs ioctls \(b.1)")
        }
        #expect(synced[1].1.ecx == 0xC0FF_EE00 && synced[1].1.esi == 0x5151_5151)
    }

    /// The state KVM holds, read with KVM_GET_REGS / KVM_GET_SREGS after a KVM_RUN that only
    /// takes in what the host wrote (a kick first: KVM returns EINTR before running the guest).
    static func flushAndReadThroughIoctls(_ backend: KVMBackend) throws -> CPUState {
        backend.kick()
        #expect(try backend.run(instructionBudget: 1) == .interrupted)
        return CPUState(regs: try backend.vcpu.getRegsThroughIoctl(), sregs: try backend.vcpu.getSregsThroughIoctl())
    }

    @Test(arguments: [true, false])
    func fastAndFullWritePathsLeaveTheSameVCPUState(syncRegisters: Bool) throws {
        var options = TestSupport.backendOptions
        options.kvmSyncRegisters = syncRegisters
        // Fast path: the state was just read, only general registers change.
        let fast = try KVMGuest.make(Self.code, options: options)
        _ = try fast.run(instructionBudget: 1)
        var wanted = try fast.readState()
        wanted.eax = 0x0BAD_F00D
        wanted.edx = 0x1234_5678
        wanted.eip += 0   // the same instruction pointer: the guest resumes where it was
        try fast.writeState(wanted)
        let viaFast = try Self.flushAndReadThroughIoctls(fast)

        // Full path: nothing read since the run, so sregs are written too.
        let full = try KVMGuest.make(Self.code, options: options)
        _ = try full.run(instructionBudget: 1)
        try full.writeState(wanted)
        let viaFull = try Self.flushAndReadThroughIoctls(full)

        #expect(viaFast == viaFull)
        #expect(viaFast == wanted)
        #expect(try fast.readState() == viaFast)
        #expect(try full.readState() == viaFull)
    }
}

@Suite(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens: \(TestSupport.kvmSkipReason)"))
struct KVMDebugAndSnapshotTests {
    @Test func singleStepStopsAfterEveryInstruction() throws {
        // nop; nop; mov eax, 1; hlt
        let backend = try KVMGuest.make([0x90, 0x90, 0xB8, 1, 0, 0, 0, 0xF4])
        try backend.setSingleStep(true)
        var stops: [GuestExit] = []
        for _ in 0..<3 { stops.append(try backend.run(instructionBudget: 1)) }
        #expect(stops == [1, 2, 7].map { .singleStep(address: KVMGuest.base + $0) })
        #expect(try backend.readState().eax == 1)
        try backend.setSingleStep(false)
        #expect(try backend.run(instructionBudget: 1) == .halt)
    }

    @Test func singleStepAndBreakpointsAreOneDebugState() throws {
        // nop; nop; nop; hlt
        let backend = try KVMGuest.make([0x90, 0x90, 0x90, 0xF4])
        try backend.setBreakpoints([KVMGuest.base + 2])
        try backend.setSingleStep(true)
        #expect(try backend.run(instructionBudget: 1) == .singleStep(address: KVMGuest.base + 1))
        try backend.setSingleStep(false)
        // The breakpoint survived turning single-stepping off.
        #expect(backend.vcpu.breakpoints == [KVMGuest.base + 2])
        #expect(try backend.run(instructionBudget: 1) == .breakpoint(address: KVMGuest.base + 2))
        try backend.setBreakpoints([])
        #expect(try backend.run(instructionBudget: 1) == .halt)
    }

    /// mov eax, 1; out 71h, al; mov eax, 2; out 72h, al; hlt
    static let twoOuts: [UInt8] = [0xB8, 1, 0, 0, 0, 0xE6, 0x71, 0xB8, 2, 0, 0, 0, 0xE6, 0x72, 0xF4]

    @Test func captureAndRestoreRoundTrip() throws {
        let backend = try KVMGuest.make(Self.twoOuts)
        #expect(try backend.run(instructionBudget: 1) == .portOut(port: 0x71, size: 1, value: 1))
        let snapshot = try backend.captureVCPU()
        #expect(snapshot.capturedParts == ["cpu", "interrupt-shadow", "nmi-pending"])
        #expect(!snapshot.interruptShadow && !snapshot.nmiPending)
        #expect(try backend.run(instructionBudget: 1) == .portOut(port: 0x72, size: 1, value: 2))
        try backend.restoreVCPU(snapshot)
        #expect(try backend.readState() == snapshot.cpu)
        #expect(try backend.captureVCPU() == snapshot)
        // The guest runs the second half again from the restored state.
        #expect(try backend.run(instructionBudget: 1) == .portOut(port: 0x72, size: 1, value: 2))
        #expect(try backend.run(instructionBudget: 1) == .halt)
    }

    @Test func restoredInterruptShadowAndPendingNMI() throws {
        let backend = try KVMGuest.make(Self.twoOuts)
        _ = try backend.run(instructionBudget: 1)
        var snapshot = try backend.captureVCPU()
        snapshot.interruptShadow = true
        try backend.restoreVCPU(snapshot)
        #expect(try backend.captureVCPU().interruptShadow)
        snapshot.interruptShadow = false
        snapshot.nmiPending = true
        try backend.restoreVCPU(snapshot)
        #expect(try backend.captureVCPU().nmiPending)
        // The pending NMI is taken through IDT vector 02h: the runtime's stub exits with OUT 82h.
        guard case let .portOut(port, _, _) = try backend.run(instructionBudget: 1) else {
            Issue.record("expected the NMI stub's OUT")
            return
        }
        #expect(port == Ports.faultBase + 2)
    }

    @Test func externalInterruptsRespectIFAndTheShadow() throws {
        let backend = try KVMGuest.make(Self.twoOuts, assist: InterpreterAssist())
        _ = try backend.run(instructionBudget: 1)
        var snapshot = try backend.captureVCPU()
        snapshot.cpu.eflags &= ~EFlags.if
        try backend.restoreVCPU(snapshot)
        #expect(try backend.deliverExternalInterrupt(vector: 0x50) == .notAccepted)
        snapshot.cpu.eflags |= EFlags.if
        snapshot.interruptShadow = true
        try backend.restoreVCPU(snapshot)
        #expect(try backend.deliverExternalInterrupt(vector: 0x50) == .notAccepted)
        snapshot.interruptShadow = false
        try backend.restoreVCPU(snapshot)
        #expect(try backend.deliverExternalInterrupt(vector: 0x50) == .delivered)
        #expect(try backend.readState().eflags & EFlags.if == 0)   // an interrupt gate clears IF
        guard case let .portOut(port, _, _) = try backend.run(instructionBudget: 1) else {
            Issue.record("expected the IRQ stub's OUT")
            return
        }
        #expect(port == Ports.faultBase + 0x50)
    }

    @Test func externalInterruptsNeedAnAssist() throws {
        let backend = try KVMGuest.make(Self.twoOuts)
        #expect(throws: HarnessError.self) { try backend.deliverExternalInterrupt(vector: 0x50) }
    }
}

@Suite(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens: \(TestSupport.kvmSkipReason)"))
struct KVMAssistTests {
    /// int 30h; hlt
    static let int30: [UInt8] = [0xCD, 0x30, 0xF4]

    /// An assist that refuses everything.
    final class Refusing: InstructionAssist {
        var calls = 0
        func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome {
            calls += 1
            return .failed("refused by the test")
        }
        func deliverInterrupt(vector: UInt8, state: inout CPUState, memory: GuestMemory, inhibited: Bool) -> InterruptDelivery {
            .notAccepted
        }
    }

    @Test func theAssistFinishesWhatKVMRefusesInsideRun() throws {
        let backend = try KVMGuest.make(Self.int30, assist: InterpreterAssist())
        let exit = try backend.run(instructionBudget: 1)
        // Natively (VMX/SVM) INT 30h reaches the stub without help; on PVM hosts the assist runs
        // it and the stub: either way one run() ends at the stub's OUT.
        guard case let .portOut(port, _, _) = exit else {
            Issue.record("expected the INT 30h stub's OUT, got \(exit)")
            return
        }
        #expect(port == Ports.faultBase + 0x30)
        #expect(backend.statistics.assists <= 1)
        #expect(backend.statistics.runs == 1)
    }

    @Test func withoutAnAssistTheEmulationFailureIsReturned() throws {
        let backend = try KVMGuest.make(Self.int30)
        switch try backend.run(instructionBudget: 1) {
        case let .internalError(suberror, _, bytes):
            #expect(suberror == 1 && bytes.starts(with: [0xCD, 0x30]))
        case let .portOut(port, _, _):
            #expect(port == Ports.faultBase + 0x30)   // a host whose KVM runs INT n itself
        case let other:
            Issue.record("unexpected exit \(other)")
        }
        #expect(backend.statistics.assists == 0)
    }

    @Test func aRefusedAssistIsReportedWithTheInstruction() throws {
        let refusing = Refusing()
        let backend = try KVMGuest.make(Self.int30, assist: refusing)
        let exit = try backend.run(instructionBudget: 1)
        if refusing.calls == 0 {
            #expect(exit != .halt)   // INT n ran natively: nothing to refuse
            return
        }
        guard case let .assistFailed(bytes, address, why) = exit else {
            Issue.record("expected .assistFailed, got \(exit)")
            return
        }
        #expect(bytes.starts(with: [0xCD, 0x30]))
        #expect(address == KVMGuest.base)
        #expect(why == "refused by the test")
        #expect(backend.statistics.assists == 0)
    }
}
