import Testing
@testable import VMMHarness

private func le(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)] }

@Suite struct InterpreterSystemTests {
    @Test func faultRoundTripThroughAStub() throws {
        // UD2 -> #UD through the IDT -> stub `push 0; pushad; out 86h, al` -> .portOut.
        let m = try TestMachine(code: [0x0F, 0x0B]) { s in s.eax = 0x11; s.edi = 0x77 }
        try m.memory.writeBytes(TestMachine.stubs + 6 * 16, [0x6A, 0x00, 0x60, 0xE6, 0x86])
        #expect(m.run() == .portOut(port: 0x86, size: 1, value: 0x11))
        #expect(m.stack(0) == 0x77 && m.stack(7) == 0x11 && m.stack(8) == 0 && m.stack(9) == TestMachine.code && m.stack(10) == 0x28)
    }

    @Test func farReturnToRing3() throws {
        // push 23h; push ring3Stack; push 1Bh; push target; retf; target: int 30h
        let target = TestMachine.code + 15
        let code: [UInt8] = [0x6A, 0x23, 0x68] + le(TestMachine.ring3Stack) + [0x6A, 0x1B, 0x68] + le(target) + [0xCB, 0xCD, 0x30]
        let m = try TestMachine(code: code)
        #expect(stubVector(m.run()) == 0x30)
        #expect(m.stack(0) == target + 2 && m.stack(1) == 0x1B && m.stack(3) == TestMachine.ring3Stack && m.stack(4) == 0x23)
    }

    @Test func privilegedInstructionsAtRing3() throws {
        for code: [UInt8] in [[0xFA], [0xFB], [0x0F, 0x20, 0xC0], [0x0F, 0x22, 0xD8], [0x0F, 0x06], [0x0F, 0x01, 0x15, 0, 0, 0, 0], [0x0F, 0x09], [0xE4, 0x60]] {
            let m = try TestMachine(code: code, ring3: true)
            #expect(stubVector(m.run()) == 13, "\(code)")
            #expect(m.stack(0) == 0 && m.stack(1) == TestMachine.code)
        }
        // With IOPL 3, CLI and IN work at ring 3.
        let io = try TestMachine(code: [0xFA, 0xE4, 0x60], ring3: true) { s in s.eflags = 0x3202 }
        #expect(io.run() == .portIn(port: 0x60, size: 1))
        #expect(io.cpu.state.eflags & EFlags.if == 0)
    }

    @Test func popfAtRing3KeepsIOPLAndIF() throws {
        let m = try TestMachine(code: [0x68] + le(0x3000 | 0x200 | 0x1 | 0x2) + [0x9D, 0xCD, 0x30], ring3: true) { s in s.eflags = 0x202 }
        #expect(stubVector(m.run()) == 0x30)
        #expect(m.stack(2) & (EFlags.iopl | EFlags.if | EFlags.cf) == EFlags.if | EFlags.cf)
    }

    @Test func descriptorTablesAndControlRegisters() throws {
        // sgdt [5000h]; str ax; mov eax, cr0; or eax, 8 (TS); mov cr0, eax; clts; mov ebx, cr0; lsl ecx, [sel 30h]; lar edx
        let code: [UInt8] = [0x0F, 0x01, 0x05] + le(0x5000) + [0x0F, 0x00, 0xCE,  // str esi
                             0x0F, 0x20, 0xC0, 0x83, 0xC8, 0x08, 0x0F, 0x22, 0xC0, 0x0F, 0x06, 0x0F, 0x20, 0xC3,
                             0xB8, 0x30, 0, 0, 0, 0x0F, 0x03, 0xC8, 0x0F, 0x02, 0xD0, 0xF4]
        let m = try TestMachine(code: code)
        #expect(m.run() == .halt)
        let s = m.cpu.state
        #expect(try m.memory.read16(0x5000) == 0x37 && (try m.memory.read32(0x5002)) == TestMachine.gdt)
        #expect(s.esi == 0x08 && s.ebx & CR0.ts == 0 && s.ecx == 0xFFFF_FFFF && s.edx == 0x00CF_9300)
    }

    @Test func x87AndSSEFaults() throws {
        let nm = try TestMachine(code: [0xDB, 0xE3]) { s in s.cr0 |= CR0.ts }
        #expect(stubVector(nm.run()) == 7)
        let ok = try TestMachine(code: [0xDB, 0xE3, 0xDF, 0xE0, 0xF4]) { s in s.eax = 0xFFFF_FFFF }
        #expect(ok.run() == .halt)
        #expect(ok.cpu.state.eax == 0xFFFF_0000)
        let ud = try TestMachine(code: [0xD9, 0xE8])  // fld1
        #expect(stubVector(ud.run()) == 6)
        let sse = try TestMachine(code: [0x0F, 0x28, 0xC1]) { s in s.cr0 |= CR0.ts }
        #expect(stubVector(sse.run()) == 7)
    }

    @Test func boundAndInto() throws {
        let b = try TestMachine(code: [0x62, 0x05] + le(0x5000)) { s in s.eax = 10 }
        try b.memory.write32(0x5000, 0); try b.memory.write32(0x5004, 5)
        #expect(stubVector(b.run()) == 5)
        #expect(b.stack(0) == TestMachine.code)
        let o = try TestMachine(code: [0xB8] + le(0x7FFF_FFFF) + [0x40, 0xCE])
        #expect(stubVector(o.run()) == 4)
        #expect(o.stack(0) == TestMachine.code + 7)
    }

    @Test func lockedAndSixteenBitForms() throws {
        // lock add [5000h], eax; 66 add word [5004h], 1; lock cmpxchg8b [5008h]
        let code: [UInt8] = [0xF0, 0x01, 0x05] + le(0x5000) + [0x66, 0x83, 0x05] + le(0x5004) + [0x01,
                             0xF0, 0x0F, 0xC7, 0x0D] + le(0x5008) + [0xF4]
        let m = try TestMachine(code: code) { s in s.eax = 2; s.edx = 0; s.ebx = 0xAA; s.ecx = 0xBB }
        try m.memory.write32(0x5000, 40)
        try m.memory.write32(0x5004, 0x1_FFFF)
        try m.memory.write32(0x5008, 2); try m.memory.write32(0x500C, 0)
        #expect(m.run() == .halt)
        #expect(try m.memory.read32(0x5000) == 42)
        #expect(try m.memory.read32(0x5004) == 0x1_0000)
        #expect(try m.memory.read32(0x5008) == 0xAA && (try m.memory.read32(0x500C)) == 0xBB)
    }

    @Test func backendMapsStops() throws {
        let m = try TestMachine(code: [0xB0, 0x41, 0xE6, 0xE9, 0xE4, 0x60, 0xEB, 0xFE])
        let b = InterpreterBackend(memory: m.memory, state: m.cpu.state)
        #expect(b.kind == .interpreter)
        #expect(try b.run(instructionBudget: 100) == .portOut(port: 0xE9, size: 1, value: 0x41))
        #expect(try b.run(instructionBudget: 100) == .portIn(port: 0x60, size: 1))
        try b.completePortIn(value: 7)
        #expect(try b.readState().eax & 0xFF == 7)
        #expect(try b.run(instructionBudget: 100) == .interrupted)
        #expect(b.statistics.instructions == 103 && b.statistics.runs == 3)
    }

    @Test func codeSegmentLimitAndHostPatchedCode() throws {
        // An instruction that ends past CS.limit: #GP(0) at it.
        let m = try TestMachine(code: [0x90, 0xB8, 1, 0, 0, 0]) { s in s.cs.limit = TestMachine.code + 3 }
        #expect(stubVector(m.run()) == 13)
        #expect(m.stack(0) == 0 && m.stack(1) == TestMachine.code + 1)
        // The host rewrites code the interpreter already decoded: the new bytes run.
        let h = try TestMachine(code: [0xB8, 1, 0, 0, 0, 0xF4])
        #expect(h.run() == .halt && h.cpu.state.eax == 1)
        try h.memory.writeBytes(TestMachine.code + 1, [2])
        var s = h.cpu.state
        s.eip = TestMachine.code
        h.cpu.state = s
        #expect(h.run() == .halt && h.cpu.state.eax == 2)
    }

    @Test func stiShadow() throws {
        let m = try TestMachine(code: [0xFB, 0x90, 0x90, 0xFB, 0xF4])
        #expect(m.cpu.step() == nil)
        #expect(m.cpu.interruptsInhibited)
        #expect(m.cpu.step() == nil)
        #expect(!m.cpu.interruptsInhibited)
        #expect(m.cpu.step() == nil)
        #expect(m.cpu.step() == nil)  // STI with IF already set: no shadow
        #expect(!m.cpu.interruptsInhibited)
    }

    @Test func externalInterruptDelivery() throws {
        let m = try TestMachine(code: [0xEB, 0xFE]) { s in s.eflags = 0x202 }
        #expect(m.run(10) == .budgetExhausted)
        #expect(m.cpu.deliverExternalInterrupt(vector: 0x20) == nil)
        #expect(m.cpu.state.eip == TestMachine.stubs + 0x20 * 16)
        #expect(m.stack(0) == TestMachine.code && m.stack(2) == 0x202)
    }
}
