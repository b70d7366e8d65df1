import Testing
@testable import VMMHarness

private let CF = EFlags.cf, PF = EFlags.pf, AF = EFlags.af, ZF = EFlags.zf, SF = EFlags.sf, OF = EFlags.of
private let arith = CF | PF | AF | ZF | SF | OF

/// Runs `code` (which should end in HLT) in ring 0 and returns the machine.
private func exec(_ code: [UInt8], configure: (inout CPUState) -> Void = { _ in }) throws -> (TestMachine, InterpreterStop) {
    let m = try TestMachine(code: code, configure: configure)
    let s = m.run()
    return (m, s)
}

@Suite struct InterpreterALUTests {
    @Test func addOverflowAndCarry() throws {
        let (a, sa) = try exec([0xB8, 0xFF, 0xFF, 0xFF, 0x7F, 0x83, 0xC0, 0x01, 0xF4])
        #expect(sa == .halt)
        #expect(a.cpu.state.eax == 0x8000_0000)
        #expect(a.cpu.state.eflags & arith == OF | SF | AF | PF)
        let (b, _) = try exec([0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0x83, 0xC0, 0x01, 0xF4])
        #expect(b.cpu.state.eax == 0)
        #expect(b.cpu.state.eflags & arith == CF | ZF | AF | PF)
    }

    @Test func subBorrowAndOverflow() throws {
        let (a, _) = try exec([0x31, 0xC0, 0x83, 0xE8, 0x01, 0xF4])
        #expect(a.cpu.state.eax == 0xFFFF_FFFF)
        #expect(a.cpu.state.eflags & arith == CF | SF | AF | PF)
        let (b, _) = try exec([0xB8, 0x00, 0x00, 0x00, 0x80, 0x83, 0xE8, 0x01, 0xF4])
        #expect(b.cpu.state.eax == 0x7FFF_FFFF)
        #expect(b.cpu.state.eflags & arith == OF | AF | PF)
    }

    @Test func adcSbbUseCarry() throws {
        let (a, _) = try exec([0xF9, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0x83, 0xD0, 0x00, 0xF4])
        #expect(a.cpu.state.eax == 0)
        #expect(a.cpu.state.eflags & (CF | ZF | OF) == CF | ZF)
        let (b, _) = try exec([0xB8, 0, 0, 0, 0, 0xF9, 0x83, 0xD8, 0x00, 0xF4])
        #expect(b.cpu.state.eax == 0xFFFF_FFFF)
        #expect(b.cpu.state.eflags & (CF | ZF | SF | OF) == CF | SF)
    }

    @Test func incPreservesCarry() throws {
        let (a, _) = try exec([0xF9, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0x40, 0xF4])  // stc; mov eax,-1; inc eax
        #expect(a.cpu.state.eax == 0)
        #expect(a.cpu.state.eflags & (CF | ZF) == CF | ZF)
    }

    @Test func shifts() throws {
        let (a, _) = try exec([0xB8, 0, 0, 0, 0x80, 0xD1, 0xE0, 0xF4])  // shl eax,1
        #expect(a.cpu.state.eax == 0)
        #expect(a.cpu.state.eflags & (CF | ZF | OF) == CF | ZF | OF)
        let (b, _) = try exec([0xF9, 0xB8, 5, 0, 0, 0, 0xC1, 0xE0, 0x00, 0xF4])  // shl eax,0 keeps CF
        #expect(b.cpu.state.eax == 5 && b.cpu.state.eflags & CF == CF)
        let (c, _) = try exec([0xB8, 0, 0, 0, 0x80, 0xC1, 0xF8, 0x1F, 0xF4])  // sar eax,31
        #expect(c.cpu.state.eax == 0xFFFF_FFFF && c.cpu.state.eflags & CF == 0)
        let (d, _) = try exec([0xB8, 0x18, 0, 0, 0, 0xC1, 0xE8, 0x04, 0xF4])  // shr eax,4
        #expect(d.cpu.state.eax == 1 && d.cpu.state.eflags & CF == CF)
        let (e, _) = try exec([0xB8, 0x01, 0, 0, 0x80, 0xD1, 0xC0, 0xF4])  // rol eax,1
        #expect(e.cpu.state.eax == 3 && e.cpu.state.eflags & (CF | OF) == CF | OF)
        let (f, _) = try exec([0xB1, 0x04, 0xB8, 0x34, 0x12, 0, 0, 0xD3, 0xC8, 0xF4])  // ror eax,cl
        #expect(f.cpu.state.eax == 0x4000_0123 && f.cpu.state.eflags & CF == 0)
        let (g, _) = try exec([0xB8, 0x00, 0x00, 0x00, 0x80, 0xBA, 0x00, 0, 0, 0x80, 0x0F, 0xA4, 0xD0, 0x01, 0xF4])  // shld eax,edx,1
        #expect(g.cpu.state.eax == 1 && g.cpu.state.eflags & CF == CF)
    }

    @Test func multiply() throws {
        let (a, _) = try exec([0xB8, 0, 0, 1, 0, 0x0F, 0xAF, 0xC0, 0xF4])  // imul eax,eax
        #expect(a.cpu.state.eax == 0 && a.cpu.state.eflags & (CF | OF) == CF | OF)
        let (b, _) = try exec([0xB8, 3, 0, 0, 0, 0x6B, 0xC0, 0xFD, 0xF4])  // imul eax,eax,-3
        #expect(b.cpu.state.eax == 0xFFFF_FFF7 && b.cpu.state.eflags & (CF | OF) == 0)
        let (c, _) = try exec([0xB8, 0, 0, 0, 0x80, 0xB9, 2, 0, 0, 0, 0xF7, 0xE1, 0xF4])  // mul ecx
        #expect(c.cpu.state.eax == 0 && c.cpu.state.edx == 1 && c.cpu.state.eflags & (CF | OF) == CF | OF)
        let (d, _) = try exec([0xB0, 0xFF, 0xB3, 0xFF, 0xF6, 0xEB, 0xF4])  // imul bl: -1*-1
        #expect(d.cpu.state.eax & 0xFFFF == 1 && d.cpu.state.eflags & CF == 0)
    }

    @Test func divide() throws {
        let (a, sa) = try exec([0x31, 0xC9, 0xF7, 0xF1, 0xF4])  // div ecx (0)
        #expect(stubVector(sa) == 0)
        #expect(a.stack(0) == TestMachine.code + 2)
        let (_, sb) = try exec([0xBA, 1, 0, 0, 0, 0xB8, 0, 0, 0, 0, 0xB9, 1, 0, 0, 0, 0xF7, 0xF1, 0xF4])
        #expect(stubVector(sb) == 0)
        let (c, sc) = try exec([0xB8, 0xF9, 0xFF, 0xFF, 0xFF, 0x99, 0xB9, 2, 0, 0, 0, 0xF7, 0xF9, 0xF4])  // idiv: -7/2
        #expect(sc == .halt && c.cpu.state.eax == 0xFFFF_FFFD && c.cpu.state.edx == 0xFFFF_FFFF)
        let (_, sd) = try exec([0xB8, 0, 0, 0, 0x80, 0x99, 0xB9, 0xFF, 0xFF, 0xFF, 0xFF, 0xF7, 0xF9, 0xF4])
        #expect(stubVector(sd) == 0)
        let (e, _) = try exec([0xB8, 0x64, 0, 0, 0, 0xB1, 0x07, 0xF6, 0xF1, 0xF4])  // div cl: 100/7
        #expect(e.cpu.state.eax & 0xFFFF == 0x020E)
    }

    @Test func bitOperations() throws {
        // bsf ecx,eax; bsr edx,eax; bts eax,31; bswap ebx; movsx esi, bl; movzx edi, bx
        let (a, _) = try exec([0xB8, 0x10, 0x01, 0, 0, 0x0F, 0xBC, 0xC8, 0x0F, 0xBD, 0xD0, 0x0F, 0xBA, 0xE8, 0x1F,
                               0xBB, 0x01, 0x02, 0x03, 0x80, 0x0F, 0xCB, 0x0F, 0xBE, 0xF3, 0x0F, 0xB7, 0xFB, 0xF4])
        let s = a.cpu.state
        #expect(s.ecx == 4 && s.edx == 8 && s.eax == 0x8000_0110 && s.eflags & CF == 0)
        #expect(s.ebx == 0x0102_0380 && s.esi == 0xFFFF_FF80 && s.edi == 0x0380)
    }

    @Test func setccCmovXaddCmpxchg() throws {
        // cmp eax,ebx (1 vs 2): setb cl; cmovb edx,ebx; xadd eax,ebx; cmpxchg esi,edi (eax=3, esi=3)
        let (a, _) = try exec([0xB8, 1, 0, 0, 0, 0xBB, 2, 0, 0, 0, 0x39, 0xD8, 0x0F, 0x92, 0xC1, 0x0F, 0x42, 0xD3,
                               0x0F, 0xC1, 0xD8, 0xBE, 3, 0, 0, 0, 0xBF, 9, 0, 0, 0, 0x0F, 0xB1, 0xFE, 0xF4])
        let s = a.cpu.state
        #expect(s.ecx & 0xFF == 1 && s.edx == 2 && s.eax == 3 && s.ebx == 1 && s.esi == 9 && s.eflags & ZF == ZF)
    }

    @Test func cpuidVendor() throws {
        let (a, _) = try exec([0x31, 0xC0, 0x0F, 0xA2, 0xF4])
        let s = a.cpu.state
        var bytes: [UInt8] = []
        for r in [s.ebx, s.edx, s.ecx] { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: r >> (8 * UInt32(i)))) } }
        #expect(String(decoding: bytes, as: UTF8.self) == "VMMHarness32")
    }
}

@Suite struct InterpreterStringAndStackTests {
    @Test func repMovsAndStos() throws {
        let m = try TestMachine(code: [0xF3, 0xA4, 0xB8, 0xDD, 0xCC, 0xBB, 0xAA, 0xB9, 4, 0, 0, 0, 0xBF, 0, 0x70, 0, 0, 0xF3, 0xAB, 0xF4]) { s in
            s.esi = 0x5000; s.edi = 0x6000; s.ecx = 100
        }
        try m.memory.writeBytes(0x5000, (0..<100).map { UInt8($0) })
        #expect(m.run() == .halt)
        let s = m.cpu.state
        #expect(s.ecx == 0 && s.esi == 0x5064 && s.edi == 0x7010)
        #expect(try m.memory.readBytes(0x6000, count: 100) == (0..<100).map { UInt8($0) })
        #expect(try m.memory.read32(0x700C) == 0xAABB_CCDD)
        #expect(try m.memory.read32(0x7010) == 0)
    }

    @Test func repeCmpsAndRepneScas() throws {
        let m = try TestMachine(code: [0xF3, 0xA6, 0x9C, 0x58, 0x89, 0xC5, 0xB0, 0x78, 0xBF, 0, 0x60, 0, 0, 0xB9, 10, 0, 0, 0, 0xF2, 0xAE, 0xF4]) { s in
            s.esi = 0x5000; s.edi = 0x6000; s.ecx = 6
        }
        try m.memory.writeBytes(0x5000, Array("abcdef".utf8))
        try m.memory.writeBytes(0x6000, Array("abcxef".utf8))
        #expect(m.run() == .halt)
        let s = m.cpu.state
        #expect(s.ebp & ZF == 0)  // flags after REPE CMPSB: mismatch
        #expect(s.edi == 0x6004 && s.ecx == 6 && s.eflags & ZF == ZF)
    }

    @Test func pushadLayoutAndPopad() throws {
        let m = try TestMachine(code: [0x60, 0xF4, 0x61, 0xF4]) { s in
            s.eax = 1; s.ecx = 2; s.edx = 3; s.ebx = 4; s.ebp = 6; s.esi = 7; s.edi = 8
        }
        #expect(m.run() == .halt)
        #expect(m.cpu.state.esp == 0x80000 - 32)
        #expect((0..<8).map { m.stack($0) } == [8, 7, 6, 0x80000, 4, 3, 2, 1])
        try m.memory.write32(m.cpu.state.esp, 0x88)  // EDI slot
        #expect(m.run() == .halt)
        #expect(m.cpu.state.edi == 0x88 && m.cpu.state.eax == 1 && m.cpu.state.esp == 0x80000)
    }

    @Test func farCallAndReturn() throws {
        let t = TestMachine.code + 8
        let m = try TestMachine(code: [0x9A, UInt8(t & 0xFF), UInt8((t >> 8) & 0xFF), UInt8(t >> 16), 0, 0x28, 0x00, 0xF4, 0xCB])
        #expect(m.run() == .halt)
        #expect(m.cpu.state.eip == TestMachine.code + 8 && m.cpu.state.esp == 0x80000)
    }

    @Test func enterLeave() throws {
        let m = try TestMachine(code: [0xC8, 0x10, 0x00, 0x00, 0xF4, 0xC9, 0xF4]) { s in s.ebp = 0x1234 }
        #expect(m.run() == .halt)
        #expect(m.cpu.state.ebp == 0x80000 - 4 && m.cpu.state.esp == 0x80000 - 4 - 0x10)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.ebp == 0x1234 && m.cpu.state.esp == 0x80000)
    }

    @Test func selfModifyingCode() throws {
        let target = TestMachine.code + 5
        let m = try TestMachine(code: [0xB9, 2, 0, 0, 0, 0x90, 0xC6, 0x05, UInt8(target & 0xFF), UInt8((target >> 8) & 0xFF),
                                       UInt8(target >> 16), 0, 0x40, 0xE2, 0xF6, 0xF4])
        #expect(m.run() == .halt)
        #expect(m.cpu.state.eax == 1)
    }
}
