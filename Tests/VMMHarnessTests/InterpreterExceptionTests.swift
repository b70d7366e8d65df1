import Testing
@testable import VMMHarness

@Suite struct InterpreterExceptionTests {
    @Test func ud2FrameRing0() throws {
        let m = try TestMachine(code: [0x0F, 0x0B]) { s in s.eflags = 0x202 }
        #expect(stubVector(m.run()) == 6)
        #expect(m.cpu.state.esp == 0x80000 - 12)
        // A fault pushes EFLAGS with RF set, as the CPU does (KVM shows 00010202h here too).
        #expect(m.stack(0) == TestMachine.code && m.stack(1) == 0x28 && m.stack(2) == 0x202 | EFlags.rf)
        #expect(m.cpu.state.eflags & EFlags.if == 0)  // interrupt gate clears IF
    }

    @Test func trapsReturnPastTheInstruction() throws {
        let a = try TestMachine(code: [0xCC])
        #expect(stubVector(a.run()) == 3)
        #expect(a.stack(0) == TestMachine.code + 1)
        let b = try TestMachine(code: [0xCD, 0x30])
        #expect(stubVector(b.run()) == 0x30)
        #expect(b.stack(0) == TestMachine.code + 2)
        let c = try TestMachine(code: [0x0F, 0x0B])
        #expect(stubVector(c.run()) == 6)
        #expect(c.stack(0) == TestMachine.code)
    }

    @Test func ring3ToRing0ThroughTheTSS() throws {
        let m = try TestMachine(code: [0xCD, 0x30], ring3: true) { s in s.eflags = 0x202 }
        #expect(stubVector(m.run()) == 0x30)
        let s = m.cpu.state
        #expect(s.cs.selector == 0x28 && s.ss.selector == 0x30 && s.esp == TestMachine.ring0FaultStack - 20)
        #expect(m.stack(0) == TestMachine.code + 2 && m.stack(1) == 0x1B && m.stack(2) == 0x202)
        #expect(m.stack(3) == TestMachine.ring3Stack && m.stack(4) == 0x23)
    }

    @Test func ring3FaultWithErrorCode() throws {
        // INT 31h through a DPL-0 gate from ring 3: #GP(31h*8+2), EIP at the INT.
        let m = try TestMachine(code: [0xCD, 0x31], ring3: true)
        #expect(stubVector(m.run()) == 13)
        #expect(m.stack(0) == 0x31 * 8 + 2 && m.stack(1) == TestMachine.code && m.stack(2) == 0x1B)
        #expect(m.cpu.state.esp == TestMachine.ring0FaultStack - 24)
        #expect(m.stack(4) == TestMachine.ring3Stack && m.stack(5) == 0x23)
    }

    @Test func segmentLoadFaults() throws {
        // Error code = selector with the RPL bits cleared; TI (bit 2) stays: 1234h refers to the LDT.
        let gp = try TestMachine(code: [0x66, 0xB8, 0x34, 0x12, 0x8E, 0xD8])
        #expect(stubVector(gp.run()) == 13)
        #expect(gp.stack(0) == 0x1234 && gp.stack(1) == TestMachine.code + 4)
        let gp2 = try TestMachine(code: [0x66, 0xB8, 0x33, 0x12, 0x8E, 0xD8])
        #expect(stubVector(gp2.run()) == 13)
        #expect(gp2.stack(0) == 0x1230)
        let np = try TestMachine(code: [0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD8])
        #expect(stubVector(np.run()) == 11)
        #expect(np.stack(0) == 0x10)
        let ss = try TestMachine(code: [0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD0])
        #expect(stubVector(ss.run()) == 12)
        #expect(ss.stack(0) == 0x10)
        let ssNull = try TestMachine(code: [0x31, 0xC0, 0x8E, 0xD0])
        #expect(stubVector(ssNull.run()) == 13)
        #expect(ssNull.stack(0) == 0)
        // A null DS loads; using it is #GP(0).
        let dsNull = try TestMachine(code: [0x31, 0xC0, 0x8E, 0xD8, 0x8B, 0x03])
        #expect(stubVector(dsNull.run()) == 13)
        #expect(dsNull.stack(0) == 0 && dsNull.stack(1) == TestMachine.code + 4)
        // Ring 3 loading a DPL-0 data segment.
        let priv = try TestMachine(code: [0x66, 0xB8, 0x30, 0x00, 0x8E, 0xD8], ring3: true)
        #expect(stubVector(priv.run()) == 13)
        #expect(priv.stack(0) == 0x30)
    }

    @Test func pushFaultLeavesESPUnchanged() throws {
        // Ring 3 with an expand-down SS (limit FFFh: valid offsets 1000h..FFFFFFFFh): a push at
        // ESP = 1000h writes FFCh and faults with #SS(0); the frame on the ring-0 stack shows the
        // PUSH's EIP and the unchanged ESP.
        let m = try TestMachine(code: [0x8E, 0xD0, 0x6A, 0x01], ring3: true) { s in s.eax = 0x3B; s.esp = 0x1000 }
        let d = SegmentDescriptor(base: 0x70000, limit: 0x0FFF, type: 0x7, isCodeOrData: true, dpl: 3, present: true, defaultBig: true, granularity: false)
        try m.memory.write64(TestMachine.gdt + 0x38, d.raw)
        var st = m.cpu.state
        st.gdtr.limit = 0x3F
        m.cpu.state = st
        #expect(stubVector(m.run()) == 12)
        #expect(m.stack(0) == 0 && m.stack(1) == TestMachine.code + 2 && m.stack(4) == 0x1000 && m.stack(5) == 0x3B)
    }

    @Test func singleStepAfterPopfSetsTF() throws {
        let m = try TestMachine(code: [0x68, 0x00, 0x01, 0x00, 0x00, 0x9D, 0x90, 0x90, 0xF4])
        #expect(stubVector(m.run()) == 1)
        #expect(m.stack(0) == TestMachine.code + 7)
        #expect(m.stack(2) & EFlags.tf != 0)
        #expect(m.cpu.state.dr6 & 0x4000 != 0)
        #expect(m.cpu.state.eflags & EFlags.tf == 0)
    }

    @Test func alignmentCheck() throws {
        let m = try TestMachine(code: [0x8B, 0x05, 0x01, 0x80, 0x08, 0x00], ring3: true) { s in
            s.cr0 |= CR0.am; s.eflags = 0x2 | EFlags.ac
        }
        #expect(stubVector(m.run()) == 17)
        #expect(m.stack(0) == 0 && m.stack(1) == TestMachine.code)
        // The same access aligned, or without CR0.AM, is fine.
        let n = try TestMachine(code: [0x8B, 0x05, 0x01, 0x80, 0x08, 0x00, 0xCD, 0x30], ring3: true) { s in s.eflags = 0x2 | EFlags.ac }
        #expect(stubVector(n.run()) == 0x30)
    }

    @Test func doubleAndTripleFault() throws {
        // #GP whose gate is not present: #NP(IDT) while delivering a contributory fault -> #DF(0).
        let d = try TestMachine(code: [0x66, 0xB8, 0x34, 0x12, 0x8E, 0xD8])
        try d.memory.write64(TestMachine.idt + 13 * 8, GateDescriptor(offset: 0, selector: 0x28, kind: .interrupt32, dpl: 0, present: false).raw)
        #expect(stubVector(d.run()) == 8)
        #expect(d.stack(0) == 0 && d.stack(1) == TestMachine.code + 4)
        // No IDT at all: #UD -> #GP -> #DF -> shutdown.
        let t = try TestMachine(code: [0x0F, 0x0B]) { s in s.idtr.limit = 0 }
        guard case .shutdown(let reason) = t.run() else { Issue.record("no shutdown"); return }
        #expect(reason.contains("triple fault") && reason.contains("#UD") && reason.contains("#DF"))
    }

    @Test func errorCodeBitsForIDTFaults() throws {
        // INT 40h with the IDT limit below it: #GP(40h*8+2) (software: EXT = 0).
        let a = try TestMachine(code: [0xCD, 0x4F]) { s in s.idtr.limit = 0x4F * 8 - 1 }
        #expect(stubVector(a.run()) == 13)
        #expect(a.stack(0) == 0x4F * 8 + 2)
        // A not-present gate for an exception: #NP(vector*8+2+EXT).
        let b = try TestMachine(code: [0x0F, 0x0B])
        try b.memory.write64(TestMachine.idt + 6 * 8, GateDescriptor(offset: 0, selector: 0x28, kind: .interrupt32, dpl: 0, present: false).raw)
        #expect(stubVector(b.run()) == 11)
        #expect(b.stack(0) == 6 * 8 + 3)
    }

    @Test func portsHaltAndMMIO() throws {
        let m = try TestMachine(code: [0xE4, 0x60, 0xB0, 0x41, 0xE6, 0xE9, 0xF4, 0xA1, 0, 0, 0, 0xF0])
        #expect(m.run() == .portIn(port: 0x60, size: 1))
        #expect(m.cpu.state.eip == TestMachine.code)
        m.cpu.completePortIn(value: 0xAB)
        #expect(m.cpu.state.eax & 0xFF == 0xAB && m.cpu.state.eip == TestMachine.code + 2)
        #expect(m.run() == .portOut(port: 0xE9, size: 1, value: 0x41))
        #expect(m.cpu.state.eip == TestMachine.code + 6)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.eip == TestMachine.code + 7)
        #expect(m.run() == .mmio(address: 0xF000_0000, isWrite: false, length: 4, data: 0))
        #expect(m.cpu.state.eip == TestMachine.code + 7)
        // Ring 3 with IOPL 0: OUT and HLT are #GP(0).
        let u = try TestMachine(code: [0xE6, 0x80], ring3: true)
        #expect(stubVector(u.run()) == 13)
        let h = try TestMachine(code: [0xF4], ring3: true)
        #expect(stubVector(h.run()) == 13)
    }

    @Test func iretToRing3AndBack() throws {
        // push 23h; push ring3Stack; push 202h; push 1Bh; push target; iretd; target: int 30h
        let target = TestMachine.code + 20
        let rs = TestMachine.ring3Stack
        func le(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)] }
        let code: [UInt8] = [0x6A, 0x23, 0x68] + le(rs) + [0x68] + le(0x202) + [0x6A, 0x1B, 0x68] + le(target) + [0xCF, 0xCD, 0x30]
        #expect(code.count == 22)
        let m = try TestMachine(code: code)
        #expect(stubVector(m.run()) == 0x30)
        #expect(m.stack(1) == 0x1B && m.stack(3) == rs && m.stack(4) == 0x23 && m.stack(2) & EFlags.if != 0)
        #expect(m.cpu.state.ds.unusable)  // DS (DPL 0) was nulled by the return to ring 3
    }
}

@Suite struct InterpreterPagingTests {
    /// Identity-maps 0–4 MiB with 4 KiB pages (U/W), then applies `tweak` to the page table.
    func pagedMachine(_ code: [UInt8], ring3: Bool = false, wp: Bool = false, tweak: (GuestMemory) throws -> Void) throws -> TestMachine {
        let m = try TestMachine(code: code, ring3: ring3) { s in
            s.cr3 = 0x200000
            s.cr0 |= CR0.pg | (wp ? CR0.wp : 0)
        }
        try m.memory.write32(0x200000, 0x201000 | 7)
        for i in UInt32(0)..<1024 { try m.memory.write32(0x201000 + i * 4, (i << 12) | 7) }
        try tweak(m.memory)
        m.cpu.state = m.cpu.state  // flush the TLB
        return m
    }

    @Test func notPresentWrite() throws {
        let m = try pagedMachine([0xC7, 0x05, 0x00, 0x00, 0x30, 0x00, 0x01, 0, 0, 0]) { mem in
            try mem.write32(0x201000 + 0x300 * 4, 0)
        }
        #expect(stubVector(m.run()) == 14)
        #expect(m.stack(0) == 2 && m.stack(1) == TestMachine.code && m.cpu.state.cr2 == 0x300000)
    }

    @Test func userReadOfSupervisorPage() throws {
        let m = try pagedMachine([0x8B, 0x05, 0x00, 0x10, 0x30, 0x00], ring3: true) { mem in
            try mem.write32(0x201000 + 0x301 * 4, 0x301000 | 3)
        }
        #expect(stubVector(m.run()) == 14)
        #expect(m.stack(0) == 5 && m.cpu.state.cr2 == 0x301000)
    }

    @Test func writeProtect() throws {
        let code: [UInt8] = [0xC7, 0x05, 0x00, 0x20, 0x30, 0x00, 0x01, 0, 0, 0, 0xF4]
        let noWP = try pagedMachine(code) { mem in try mem.write32(0x201000 + 0x302 * 4, 0x302000 | 5) }
        #expect(noWP.run() == .halt)
        #expect(try noWP.memory.read32(0x201000 + 0x302 * 4) & 0x60 == 0x60)  // accessed + dirty
        let withWP = try pagedMachine(code, wp: true) { mem in try mem.write32(0x201000 + 0x302 * 4, 0x302000 | 5) }
        #expect(stubVector(withWP.run()) == 14)
        #expect(withWP.stack(0) == 3)
    }

    @Test func largePagesAndInvlpg() throws {
        // 4 MiB page at linear 400000h -> physical 0; read [401000h] sees physical 1000h (GDT).
        let m = try pagedMachine([0x8B, 0x05, 0x08, 0x10, 0x40, 0x00, 0xF4]) { mem in
            try mem.write32(0x200000 + 4, 0x0000_0087)
        }
        var s = m.cpu.state
        s.cr4 |= 0x10
        m.cpu.state = s
        #expect(m.run() == .halt)
        #expect(m.cpu.state.eax == (try m.memory.read32(0x1008)))
    }
}

@Suite struct InterpreterFuzzTests {
    /// Random bytes at ring 0 and ring 3 must only ever produce stops, never crash the host.
    @Test func randomBytesNeverCrash() throws {
        var rng = SplitMix(seed: 0x5EED)
        let m = try TestMachine(code: [])
        let base = m.cpu.state
        let tables = try m.memory.readBytes(0, count: 0x4000)
        for i in 0..<20_000 {
            var bytes = [UInt8](repeating: 0, count: 16)
            for j in 0..<16 { bytes[j] = UInt8(truncatingIfNeeded: rng.next()) }
            try m.memory.writeBytes(TestMachine.code, bytes)
            var s = base
            if i & 1 == 1 {
                s.cs = .flatCode(selector: 0x1B, dpl: 3)
                s.ss = .flatData(selector: 0x23, dpl: 3)
                s.ds = s.ss; s.es = s.ss
                s.esp = TestMachine.ring3Stack
            }
            s.eax = UInt32(truncatingIfNeeded: rng.next()); s.ebx = UInt32(truncatingIfNeeded: rng.next()) & 0x3FFFFF
            s.ecx = UInt32(truncatingIfNeeded: rng.next()) & 0xFF; s.esi = 0x5000; s.edi = 0x6000
            m.cpu.state = s
            _ = m.cpu.run(budget: 64)
            // Keep the tables intact for the next round.
            try m.memory.writeBytes(0, tables)
        }
        #expect(m.cpu.instructionsExecuted > 0)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
