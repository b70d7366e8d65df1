import Testing
@testable import VMMHarness

/// A backend over a TestMachine's memory, starting from its state.
private func backend(_ m: TestMachine) -> InterpreterBackend {
    InterpreterBackend(memory: m.memory, state: m.cpu.state)
}

/// The dword at the backend's ESP + 4 * i.
private func stack(_ b: InterpreterBackend, _ i: UInt32) throws -> UInt32 {
    try b.memory.read32(b.readState().esp &+ 4 * i)
}

private let code = TestMachine.code
private func stub(_ vector: UInt32) -> UInt32 { TestMachine.stubs + vector * 16 }

/// `InterpreterBackend`'s side of the `ExecutionBackend` protocol: interrupts on its own
/// interpreter (the shadow kept), NMIs, single-stepping, vCPU capture and restore, string I/O
/// element by element; and `InterpreterAssist`'s interrupt delivery.
@Suite struct InterpreterBackendTests {
    @Test func noKicker() throws {
        let b = backend(try TestMachine(code: [0xF4]))
        #expect(b.kicker == nil)
    }

    // MARK: - External interrupts and the shadow

    @Test func stiShadowIsKeptAcrossDelivery() throws {
        // sti; nop; jmp $
        let b = backend(try TestMachine(code: [0xFB, 0x90, 0xEB, 0xFE]))
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .notAccepted)   // IF = 0
        #expect(try b.run(instructionBudget: 1) == .interrupted)                // sti
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .notAccepted)   // the shadow
        #expect(try b.readState().eip == code + 1)
        #expect(try b.run(instructionBudget: 1) == .interrupted)                // nop
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .delivered)
        let s = try b.readState()
        #expect(s.eip == stub(0x20) && s.eflags & EFlags.if == 0)
        #expect(try stack(b, 0) == code + 2 && stack(b, 1) == 0x28 && stack(b, 2) & EFlags.if != 0)
        #expect(try b.run(instructionBudget: 10) == .portOut(port: 0xA0, size: 1, value: 0))
    }

    @Test func movSSAndPopSSShadows() throws {
        // mov ax, ss; mov ss, ax; nop; push ss; pop ss; nop; jmp $   (IF set)
        let b = backend(try TestMachine(code: [0x66, 0x8C, 0xD0, 0x8E, 0xD0, 0x90, 0x16, 0x17, 0x90, 0xEB, 0xFE]) { s in s.eflags = 0x202 })
        #expect(try b.run(instructionBudget: 2) == .interrupted)
        #expect(try b.deliverExternalInterrupt(vector: 0x21) == .notAccepted)
        #expect(try b.run(instructionBudget: 1) == .interrupted)
        #expect(try b.run(instructionBudget: 2) == .interrupted)
        #expect(try b.deliverExternalInterrupt(vector: 0x21) == .notAccepted)
        #expect(try b.run(instructionBudget: 1) == .interrupted)
        #expect(try b.deliverExternalInterrupt(vector: 0x21) == .delivered)
        #expect(try stack(b, 0) == code + 9)
    }

    @Test func hostWritesAndTheShadow() throws {
        // Writing back the state read keeps the shadow; writing another state ends it.
        let b = backend(try TestMachine(code: [0xFB, 0x90, 0x90, 0xEB, 0xFE]))
        #expect(try b.run(instructionBudget: 1) == .interrupted)
        let s = try b.readState()
        try b.writeState(s)
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .notAccepted)
        var moved = s
        moved.eip = code + 2
        try b.writeState(moved)
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .delivered)
        #expect(try stack(b, 0) == code + 2)
    }

    @Test func notAcceptedWhileAnINWaits() throws {
        // in al, 60h; jmp $ (IF set). The IN is not finished until completePortIn.
        let b = backend(try TestMachine(code: [0xE4, 0x60, 0xEB, 0xFE]) { s in s.eflags = 0x202 })
        #expect(try b.run(instructionBudget: 10) == .portIn(port: 0x60, size: 1))
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .notAccepted)
        try b.completePortIn(value: 0x42)
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .delivered)
        #expect(try stack(b, 0) == code + 2 && b.readState().eax & 0xFF == 0x42)
    }

    @Test func interruptBetweenRepElementsReturnsToTheInstruction() throws {
        // rep outsb (3 elements; IF set): an interrupt after the first returns to the REP.
        let b = backend(try TestMachine(code: [0xF3, 0x6E, 0xF4]) { s in s.eflags = 0x202; s.esi = 0x40000; s.ecx = 3; s.edx = 0x3F8 })
        #expect(try b.run(instructionBudget: 100) == .portOut(port: 0x3F8, size: 1, value: 0))
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .delivered)
        #expect(try stack(b, 0) == code)
        #expect(try b.readState().ecx == 2 && b.readState().esi == 0x40001)
    }

    @Test func deliveryThatShutsDown() throws {
        // An IDT limit too small for any vector and a #DF gate that is also out of it: the
        // delivery of 20h triple-faults.
        let b = backend(try TestMachine(code: [0x90]) { s in s.eflags = 0x202; s.idtr.limit = 7 })
        guard case let .shutdown(reason) = try b.deliverExternalInterrupt(vector: 0x20) else {
            Issue.record("expected a shutdown")
            return
        }
        #expect(reason.contains("triple fault"))
    }

    // MARK: - NMI

    @Test func nmiIgnoresIFAndTheShadow() throws {
        // sti; nop (IF = 0 before): the NMI goes in right after STI.
        let b = backend(try TestMachine(code: [0xFB, 0x90, 0xF4]))
        #expect(try b.run(instructionBudget: 1) == .interrupted)
        try b.injectNMI()
        #expect(try b.readState().eip == stub(2))
        #expect(try stack(b, 0) == code + 1)
        #expect(try b.run(instructionBudget: 10) == .portOut(port: 0x82, size: 1, value: 0))
        // With IF clear from the start too.
        let c = backend(try TestMachine(code: [0x90]))
        try c.injectNMI()
        #expect(try c.run(instructionBudget: 10) == .portOut(port: 0x82, size: 1, value: 0))
        #expect(try stack(c, 0) == code)
    }

    @Test func nmiDuringAPendingINIsHeldUntilTheNextRun() throws {
        let b = backend(try TestMachine(code: [0xE4, 0x60, 0xF4]))
        #expect(try b.run(instructionBudget: 10) == .portIn(port: 0x60, size: 1))
        try b.injectNMI()
        #expect(try b.captureVCPU().nmiPending)
        #expect(try b.readState().eip == code)
        try b.completePortIn(value: 0x99)
        #expect(try b.run(instructionBudget: 10) == .portOut(port: 0x82, size: 1, value: 0x99))
        #expect(try stack(b, 0) == code + 2)
        #expect(try !b.captureVCPU().nmiPending)
    }

    @Test func nmiThatShutsDownIsTheNextExit() throws {
        let b = backend(try TestMachine(code: [0x90]) { s in s.idtr.limit = 7 })
        try b.injectNMI()
        guard case .shutdown = try b.run(instructionBudget: 10) else {
            Issue.record("expected the shutdown of the NMI delivery")
            return
        }
    }

    // MARK: - Single step

    @Test func singleStep() throws {
        // mov eax, 1; nop; out E9h, al; ud2; ...
        let b = backend(try TestMachine(code: [0xB8, 0x01, 0x00, 0x00, 0x00, 0x90, 0xE6, 0xE9, 0x0F, 0x0B]))
        try b.setSingleStep(true)
        #expect(try b.run(instructionBudget: 1000) == .singleStep(address: code + 5))
        #expect(try b.readState().eax == 1)
        #expect(try b.run(instructionBudget: 1000) == .singleStep(address: code + 6))
        // OUT stops by itself: that stop, not .singleStep.
        #expect(try b.run(instructionBudget: 1000) == .portOut(port: 0xE9, size: 1, value: 1))
        #expect(try b.readState().eip == code + 8)
        // UD2: the #UD is delivered, the next instruction is the handler's first.
        #expect(try b.run(instructionBudget: 1000) == .singleStep(address: stub(6)))
        #expect(b.statistics.instructions == 3)
        // A breakpoint at the next instruction comes first.
        try b.setBreakpoints([stub(6)])
        #expect(try b.run(instructionBudget: 1000) == .breakpoint(address: stub(6)))
        try b.setBreakpoints([])
        #expect(try b.run(instructionBudget: 1000) == .portOut(port: 0x86, size: 1, value: 1))
        // Off again: runs on to the end.
        try b.setSingleStep(false)
        #expect(try b.run(instructionBudget: 1000) == .halt)
    }

    @Test func singleStepThroughRepStringIO() throws {
        // Every INS element is its own stop; after the last one, the next step is a single step.
        let b = backend(try TestMachine(code: [0xF3, 0x6C, 0x90, 0xF4]) { s in s.edi = 0x41000; s.ecx = 2; s.edx = 0x3F8 })
        try b.setSingleStep(true)
        #expect(try b.run(instructionBudget: 1) == .portIn(port: 0x3F8, size: 1))
        try b.completePortIn(value: 7)
        #expect(try b.run(instructionBudget: 1) == .portIn(port: 0x3F8, size: 1))
        try b.completePortIn(value: 8)
        #expect(try b.readState().eip == code + 2)
        #expect(try b.run(instructionBudget: 1) == .singleStep(address: code + 3))
        #expect(try b.memory.readBytes(0x41000, count: 2) == [7, 8])
    }

    // MARK: - Capture and restore

    @Test func captureAndRestoreRoundTrip() throws {
        // fldcw [40000h]; sti; nop; mov eax, 5; jmp $
        let m = try TestMachine(code: [0xD9, 0x2D, 0x00, 0x00, 0x04, 0x00, 0xFB, 0x90, 0xB8, 0x05, 0x00, 0x00, 0x00, 0xEB, 0xFE])
        try m.memory.write16(0x40000, 0x027F)
        let b = backend(m)
        #expect(try b.run(instructionBudget: 2) == .interrupted)    // fldcw, sti
        let snap = try b.captureVCPU()
        #expect(snap.interruptShadow && !snap.nmiPending)
        #expect(try snap.cpu == b.readState())
        #expect(snap.cpu.eip == code + 7)
        #expect(snap.x87 == X87ControlWords(control: 0x027F, status: 0))
        #expect(snap.capturedParts == InterpreterBackend.capturedParts)
        #expect(snap.capturedParts.contains("interruptShadow") && snap.capturedParts.contains("x87ControlWord"))

        // Move on: the shadow ends, EAX changes, the FPU is reset.
        #expect(try b.run(instructionBudget: 2) == .interrupted)
        b.interpreter.fpuControl = 0x37F
        #expect(try b.readState().eax == 5)
        #expect(try b.deliverExternalInterrupt(vector: 0x20) == .delivered)

        // Restore on the same backend and on a fresh one: the same vCPU, shadow included.
        let fresh = InterpreterBackend(memory: m.memory, state: CPUState())
        for target in [b, fresh] {
            try target.restoreVCPU(snap)
            #expect(try target.readState() == snap.cpu)
            #expect(try target.captureVCPU() == snap)
            #expect(try target.deliverExternalInterrupt(vector: 0x20) == .notAccepted)
            #expect(try target.run(instructionBudget: 1) == .interrupted)   // nop
            #expect(try target.deliverExternalInterrupt(vector: 0x20) == .delivered)
            #expect(try stack(target, 0) == code + 8)
        }
        // A snapshot without x87 words leaves the target's as they are; a held NMI is delivered
        // when the next run starts.
        var other = snap
        other.x87 = nil
        other.interruptShadow = false
        other.nmiPending = true
        try fresh.restoreVCPU(other)
        #expect(fresh.interpreter.fpuControl == 0x027F)
        #expect(try fresh.run(instructionBudget: 10) == .portOut(port: 0x82, size: 1, value: 0))
        #expect(try stack(fresh, 0) == code + 7)
    }

    // MARK: - InterpreterAssist

    @Test func assistDeliversInterrupts() throws {
        let m = try TestMachine(code: [0x90]) { s in s.eflags = 0x202 }
        let assist = InterpreterAssist()
        var state = m.cpu.state
        #expect(assist.deliverInterrupt(vector: 0x20, state: &state, memory: m.memory, inhibited: true) == .notAccepted)
        #expect(state == m.cpu.state)
        var masked = m.cpu.state
        masked.eflags = 0x2
        #expect(assist.deliverInterrupt(vector: 0x20, state: &masked, memory: m.memory, inhibited: false) == .notAccepted)
        // An NMI ignores both.
        var nmi = masked
        #expect(assist.deliverInterrupt(vector: 0x02, state: &nmi, memory: m.memory, inhibited: true) == .delivered)
        #expect(nmi.eip == stub(2) && nmi.esp == TestMachine.ring0Stack - 12)
        #expect(assist.deliverInterrupt(vector: 0x20, state: &state, memory: m.memory, inhibited: false) == .delivered)
        #expect(state.eip == stub(0x20) && state.eflags & EFlags.if == 0)
        #expect(try m.memory.read32(state.esp) == code && m.memory.read32(state.esp + 8) == 0x202)
        // The same assist keeps working on the next instruction (one interpreter across calls).
        var s2 = m.cpu.state
        #expect(assist.assist(state: &s2, memory: m.memory) == .completed)
        #expect(s2.eip == code + 1)
    }
}
