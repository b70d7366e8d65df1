import Testing
@testable import VMMHarness

/// Virtual-8086 mode in the interpreter (SDM vol. 3A, chapter 20; 6.12.1; vol. 2 IRET/INT n).
@Suite struct InterpreterV86Tests {
    /// Ring-0 interrupt stack of the TestMachine's TSS (SS0:ESP0 = 30h:20000h).
    static let r0Top = TestMachine.ring0FaultStack

    // MARK: - Execution

    @Test func hostWrittenStateRunsSixteenBitCode() throws {
        let code: [UInt8] = [
            0xB8, 0x00, 0x30,              // mov ax, 3000h
            0x8E, 0xD8,                    // mov ds, ax
            0xBB, 0x10, 0x00,              // mov bx, 0010h
            0xBE, 0x04, 0x00,              // mov si, 0004h
            0xC7, 0x00, 0x34, 0x12,        // mov word [bx+si], 1234h      -> 30014h
            0x8C, 0xD8,                    // mov ax, ds
            0x05, 0x01, 0x00,              // add ax, 1
            0x8E, 0xC0,                    // mov es, ax                   (base 30010h)
            0x26, 0x8B, 0x50, 0xF0,        // mov dx, es:[bx+si-10h]      -> 30014h
            0x68, 0x78, 0x56,              // push 5678h                   (16-bit push)
            0x89, 0xE5,                    // mov bp, sp
            0x8B, 0x4E, 0x00,              // mov cx, [bp+0]               (SS default)
            0x66, 0xB8, 0x78, 0x56, 0x34, 0x12,  // mov eax, 12345678h (66h: 32-bit operand)
            0x66, 0x89, 0x07,              // mov [bx], eax                -> 30010h
            0x67, 0x8B, 0x3C, 0x24,        // mov di, [esp]                (67h: 32-bit address)
            0xF4,                          // hlt: #GP(0) at CPL 3
        ]
        let m = try TestMachine.v86(code: code)
        // The host-written state got real-mode style caches.
        let s0 = m.cpu.state
        #expect(s0.cs.base == 0x10000 && s0.cs.limit == 0xFFFF && s0.cs.dpl == 3 && !s0.cs.defaultBig)
        #expect(s0.ss.base == 0x20000 && s0.ds.base == 0x30000 && s0.gs.base == 0x60000)
        #expect(m.cpu.cpl == 3)
        #expect(stubVector(m.run()) == 13)
        let f = m.v86Frame(errorCode: true)
        #expect(f.error == 0 && f.eip == UInt32(code.count - 1) && f.cs == 0x1000)
        #expect(f.eflags & EFlags.vm != 0)
        #expect(f.esp == 0xFFFC && f.ss == 0x2000 && f.es == 0x3001 && f.ds == 0x3000 && f.fs == 0x5000 && f.gs == 0x6000)
        let s = m.cpu.state
        #expect(s.edx & 0xFFFF == 0x1234 && s.ecx & 0xFFFF == 0x5678 && s.edi & 0xFFFF == 0x5678)
        #expect(try m.memory.read16(0x30014) == 0x1234)
        #expect(try m.memory.read32(0x30010) == 0x1234_5678)
        #expect(try m.memory.read16(0x2FFFC) == 0x5678)
    }

    @Test func farCallAndReturnAreRealModeStyle() throws {
        var code: [UInt8] = [
            0x9A, 0x0A, 0x00, 0x01, 0x10,  // call far 1001:000A            (linear 1001Ah)
            0xC5, 0x36, 0x00, 0x00,        // lds si, [0]                   (DS:0 = 1234:5678)
            0xF4,                          // hlt
        ]
        code += [UInt8](repeating: 0x90, count: 0x1A - code.count)
        code += [
            0xB8, 0x34, 0x12,              // 1001:000A  mov ax, 1234h
            0x8C, 0xCB,                    //            mov bx, cs
            0xCB,                          //            retf
        ]
        let m = try TestMachine.v86(code: code)
        try m.memory.write32(0x30000, 0x1234_5678)
        #expect(stubVector(m.run()) == 13)
        let f = m.v86Frame(errorCode: true)
        #expect(f.eip == 9 && f.cs == 0x1000 && f.esp == 0xFFFE && f.ds == 0x1234)
        #expect(m.cpu.state.eax & 0xFFFF == 0x1234 && m.cpu.state.ebx & 0xFFFF == 0x1001 && m.cpu.state.esi & 0xFFFF == 0x5678)
    }

    // MARK: - Entering by IRET, leaving through the IDT, returning by IRET

    @Test func iretEntersV86AndUD2DeliversTheFullFrame() throws {
        // Ring 0 pushes a V86 IRET frame (GS, FS, DS, ES, SS, ESP, EFLAGS, CS, EIP) and IRETDs.
        var ring0: [UInt8] = []
        for v: UInt32 in [0x6000, 0x5000, 0x3000, 0x4000, 0x2000, 0xFFF0, EFlags.vm | EFlags.if | 2, 0x5000, 0] {
            ring0 += [0x68] + withUnsafeBytes(of: v.littleEndian) { Array($0) }
        }
        ring0.append(0xCF)
        let m = try TestMachine(code: ring0)
        // V86 code at 5000:0000.
        try m.memory.writeBytes(0x50000, [
            0xA1, 0x00, 0x00,                    // mov ax, [0]        (DS = 3000h)
            0x0F, 0x0B,                          // ud2
            0x26, 0x8B, 0x1E, 0x00, 0x00,        // mov bx, es:[0]     (ES = 4000h)
            0xF4,                                // hlt -> #GP(0)
        ])
        try m.memory.write16(0x30000, 0xBEEF)
        try m.memory.write16(0x40000, 0xCAFE)
        // #UD handler: out 86h, al; add dword [esp], 2; iretd.
        try m.memory.writeBytes(0x6000, [0xE6, 0x86, 0x83, 0x04, 0x24, 0x02, 0xCF])
        try m.memory.write64(TestMachine.idt + 6 * 8, GateDescriptor(offset: 0x6000, selector: 0x28, kind: .interrupt32, dpl: 0).raw)

        // The IRETD: V86 mode with everything loaded real-mode style.
        for _ in 0..<10 { #expect(m.cpu.step() == nil) }
        let v = m.cpu.state
        #expect(v.eflags == EFlags.vm | EFlags.if | 2 && m.cpu.cpl == 3)
        #expect(v.eip == 0 && v.esp == 0xFFF0)
        #expect(v.cs.selector == 0x5000 && v.cs.base == 0x50000 && v.cs.limit == 0xFFFF && !v.cs.defaultBig)
        #expect(v.ss.base == 0x20000 && v.es.base == 0x40000 && v.ds.base == 0x30000 && v.fs.base == 0x50000 && v.gs.base == 0x60000)
        #expect(v.ds.dpl == 3 && v.ds.present && !v.ds.unusable && v.ds.limit == 0xFFFF)

        // UD2 in V86: the ring-0 stack from TSS.SS0:ESP0 holds the SDM's frame, slot by slot.
        #expect(m.run() == .portOut(port: 0x86, size: 1, value: 0xBEEF & 0xFF))
        let s = m.cpu.state
        #expect(s.esp == Self.r0Top - 36 && s.ss.selector == 0x30 && s.cs.selector == 0x28 && m.cpu.cpl == 0)
        #expect(m.stack(0) == 3)                                   // EIP of the UD2
        #expect(m.stack(1) == 0x5000)                              // CS
        #expect(m.stack(2) == EFlags.vm | EFlags.if | EFlags.rf | 2)  // EFLAGS (VM set; RF: a fault)
        #expect(m.stack(3) == 0xFFF0)                              // ESP
        #expect(m.stack(4) == 0x2000)                              // SS
        #expect(m.stack(5) == 0x4000)                              // ES
        #expect(m.stack(6) == 0x3000)                              // DS
        #expect(m.stack(7) == 0x5000)                              // FS
        #expect(m.stack(8) == 0x6000)                              // GS
        for r in [s.ds, s.es, s.fs, s.gs] { #expect(r.selector == 0 && r.unusable) }
        #expect(s.eflags & (EFlags.vm | EFlags.if | EFlags.tf | EFlags.nt | EFlags.rf) == 0)

        // The handler's IRETD returns to V86 mode past the UD2 with everything restored.
        #expect(stubVector(m.run()) == 13)
        let f = m.v86Frame(errorCode: true)
        #expect(f.error == 0 && f.eip == 10 && f.cs == 0x5000)
        #expect(f.eflags & ~EFlags.rf == EFlags.vm | EFlags.if | 2)
        #expect(f.esp == 0xFFF0 && f.ss == 0x2000 && f.es == 0x4000 && f.ds == 0x3000 && f.fs == 0x5000 && f.gs == 0x6000)
        #expect(m.cpu.state.eax & 0xFFFF == 0xBEEF && m.cpu.state.ebx & 0xFFFF == 0xCAFE)
        #expect(m.cpu.state.esp == Self.r0Top - 40)
    }

    @Test func externalInterruptFromV86() throws {
        let m = try TestMachine.v86(code: [0x90, 0xF4]) { s in s.eflags |= EFlags.if }
        #expect(m.cpu.step() == nil)
        #expect(m.cpu.deliverExternalInterrupt(vector: 0x20) == nil)
        #expect(stubVector(m.run()) == 0x20)
        let f = m.v86Frame(errorCode: false)
        #expect(f.eip == 1 && f.cs == 0x1000 && f.eflags == EFlags.vm | EFlags.if | 2)
        #expect(f.esp == 0xFFFE && f.ss == 0x2000 && f.es == 0x4000 && f.ds == 0x3000 && f.fs == 0x5000 && f.gs == 0x6000)
        #expect(m.cpu.state.esp == Self.r0Top - 36)
    }

    @Test func gateToANonRingZeroSegmentIsGP() throws {
        // INT 30h (IOPL 3) through a DPL-3 gate whose target is ring-3 code: #GP(18h).
        let m = try TestMachine.v86(code: [0xCD, 0x30], iopl: 3)
        try m.memory.write64(TestMachine.idt + 0x30 * 8, GateDescriptor(offset: 0x1000, selector: 0x1B, kind: .interrupt32, dpl: 3).raw)
        #expect(stubVector(m.run()) == 13)
        let f = m.v86Frame(errorCode: true)
        #expect(f.error == 0x18 && f.eip == 0 && f.eflags & EFlags.vm != 0 && f.gs == 0x6000)
    }

    // MARK: - IOPL-sensitive instructions (no VME)

    @Test func ioplSensitiveInstructionsFaultBelowIOPL3() throws {
        let cases: [[UInt8]] = [[0xFA], [0xFB], [0x9C], [0x9D], [0x66, 0x9C], [0x66, 0x9D], [0xCD, 0x30], [0xCF], [0x66, 0xCF]]
        for code in cases {
            for iopl: UInt32 in [0, 1, 2] {
                let m = try TestMachine.v86(code: code, iopl: iopl)
                #expect(stubVector(m.run()) == 13, "\(code) IOPL \(iopl)")
                let f = m.v86Frame(errorCode: true)
                #expect(f.error == 0 && f.eip == 0 && f.cs == 0x1000 && f.esp == 0xFFFE, "\(code)")
                #expect(f.eflags & EFlags.vm != 0 && (f.eflags >> 12) & 3 == iopl)
            }
        }
        // INT3 is not IOPL-sensitive: delivered through its DPL-3 gate as a trap.
        let bp = try TestMachine.v86(code: [0xCC])
        #expect(stubVector(bp.run()) == 3)
        #expect(bp.v86Frame(errorCode: false).eip == 1 && bp.v86Frame(errorCode: false).gs == 0x6000)
    }

    @Test func ioplSensitiveInstructionsRunAtIOPL3() throws {
        let code: [UInt8] = [
            0xFB,                    // 00 sti
            0xFA,                    // 01 cli
            0x9C,                    // 02 pushf
            0x58,                    // 03 pop ax
            0x68, 0xD5, 0x08,        // 04 push 08D5h   (IOPL 0 in the image)
            0x9D,                    // 07 popf         (IOPL stays 3)
            0x9C,                    // 08 pushf
            0x5A,                    // 09 pop dx
            0x66, 0x9C,              // 0A pushfd       (VM not in the image)
            0x66, 0x59,              // 0C pop ecx
            0x68, 0x02, 0x02,        // 0E push 0202h   (FLAGS image: IF)
            0x0E,                    // 11 push cs
            0x68, 0x17, 0x00,        // 12 push 0017h
            0xCF,                    // 15 iret
            0xF4,                    // 16 (skipped)
            0xCD, 0x30,              // 17 int 30h      (DPL-3 gate)
        ]
        let m = try TestMachine.v86(code: code, iopl: 3)
        #expect(stubVector(m.run()) == 0x30)
        let s = m.cpu.state
        #expect(s.eax & 0xFFFF == 0x3002)
        #expect(s.edx & 0xFFFF == 0x38D7)
        #expect(s.ecx == 0x38D7)
        let f = m.v86Frame(errorCode: false)
        #expect(f.eip == 0x19 && f.cs == 0x1000 && f.eflags == EFlags.vm | 0x3000 | EFlags.if | 2)
        #expect(f.esp == 0xFFFE && f.ss == 0x2000 && f.ds == 0x3000)
        #expect(s.eflags & (EFlags.vm | EFlags.if) == 0)
    }

    @Test func iretToV86CannotChangeVMorIOPLFromInside() throws {
        // IRETD in V86 (IOPL 3) with an image clearing VM and IOPL: both stay.
        let code: [UInt8] = [
            0x66, 0x68, 0x02, 0x02, 0x00, 0x00,  // push dword 00000202h
            0x66, 0x0E,                          // push cs (dword)
            0x66, 0x68, 0x10, 0x00, 0x00, 0x00,  // push dword 00000010h
            0x66, 0xCF,                          // iretd
            0xF4,                                // 10 hlt
        ]
        let m = try TestMachine.v86(code: code, iopl: 3)
        #expect(stubVector(m.run()) == 13)
        let f = m.v86Frame(errorCode: true)
        #expect(f.eip == 0x10 && f.eflags & ~EFlags.rf == EFlags.vm | 0x3000 | EFlags.if | 2)
    }

    // MARK: - Privileged instructions and I/O

    @Test func privilegedAndUnrecognizedInstructions() throws {
        let gp: [[UInt8]] = [[0xF4], [0x0F, 0x20, 0xC0], [0x0F, 0x22, 0xC0], [0x0F, 0x01, 0x16, 0x00, 0x00], [0x0F, 0x06]]
        for code in gp {
            for iopl: UInt32 in [0, 3] {
                let m = try TestMachine.v86(code: code, iopl: iopl)
                #expect(stubVector(m.run()) == 13, "\(code)")
                #expect(m.stack(0) == 0 && m.stack(1) == 0, "\(code)")
            }
        }
        let ud: [[UInt8]] = [[0x0F, 0x00, 0xC0], [0x0F, 0x00, 0xD8], [0x0F, 0x02, 0xC0], [0x0F, 0x03, 0xC0], [0x63, 0xC0]]
        for code in ud {
            let m = try TestMachine.v86(code: code, iopl: 3)
            #expect(stubVector(m.run()) == 6, "\(code)")
            #expect(m.stack(0) == 0 && m.stack(2) & EFlags.vm != 0, "\(code)")
        }
    }

    @Test func ioUsesTheTSSBitmapNotIOPL() throws {
        // I/O map base 68h, bitmap bytes 68h..79h (ports 00h–8Fh): port 61h denied.
        let code: [UInt8] = [
            0xE4, 0x60,              // 00 in al, 60h     -> allowed
            0xE6, 0x80,              // 02 out 80h, al    -> allowed
            0xE4, 0x61,              // 04 in al, 61h     -> #GP(0)
        ]
        let m = try TestMachine.v86(code: code, iopl: 0) { s in s.tr.limit = 0x79 }
        try m.memory.write16(TestMachine.tss + 0x66, 0x68)
        try m.memory.write8(TestMachine.tss + 0x68 + 0x0C, 0x02)
        #expect(m.run() == .portIn(port: 0x60, size: 1))
        m.cpu.completePortIn(value: 0x42)
        #expect(m.run() == .portOut(port: 0x80, size: 1, value: 0x42))
        #expect(stubVector(m.run()) == 13)
        #expect(m.stack(0) == 0 && m.stack(1) == 4)
        // No bitmap (I/O map base at the 67h limit): no I/O in V86 mode, whatever IOPL is.
        for io: [UInt8] in [[0xE4, 0x60], [0xE6, 0x80], [0xEC], [0x66, 0xEF], [0x6C], [0x6F]] {
            for iopl: UInt32 in [0, 3] {
                let n = try TestMachine.v86(code: io, iopl: iopl)
                try n.memory.write16(TestMachine.tss + 0x66, 0x68)
                #expect(stubVector(n.run()) == 13, "\(io)")
                #expect(n.stack(0) == 0 && n.stack(1) == 0, "\(io)")
            }
        }
        // A port whose bitmap bytes lie beyond the TSS limit: #GP(0); a word OUT straddling a denied bit too.
        let far = try TestMachine.v86(code: [0xBA, 0x00, 0x01, 0xEC], iopl: 3) { s in s.tr.limit = 0x79 }
        try far.memory.write16(TestMachine.tss + 0x66, 0x68)
        #expect(stubVector(far.run()) == 13)
        #expect(far.stack(1) == 3)
        let word = try TestMachine.v86(code: [0xE7, 0x60]) { s in s.tr.limit = 0x79 }
        try word.memory.write16(TestMachine.tss + 0x66, 0x68)
        try word.memory.write8(TestMachine.tss + 0x68 + 0x0C, 0x02)
        #expect(stubVector(word.run()) == 13)
    }

    @Test func pageFaultFromV86IsAUserAccess() throws {
        // Paging on: the first 4 MiB identity-mapped user/writable except page 30000h (V86 DS:0).
        let m = try TestMachine.v86(code: [0xA0, 0x00, 0x00]) { s in  // mov al, [0]
            s.cr0 |= CR0.pg
            s.cr3 = 0x8000
        }
        try m.memory.write32(0x8000, 0x7000 | 7)
        for i in UInt32(0)..<1024 { try m.memory.write32(0x7000 + 4 * i, i == 0x30 ? 0 : (i << 12) | 7) }
        #expect(stubVector(m.run()) == 14)
        #expect(m.cpu.state.cr2 == 0x30000)
        let f = m.v86Frame(errorCode: true)
        #expect(f.error == 4 && f.eip == 0 && f.cs == 0x1000 && f.eflags & EFlags.vm != 0 && f.ds == 0x3000)
    }

    // MARK: - Limits and wrap-around

    @Test func offsetsBeyondFFFFFault() throws {
        // A word at DS:FFFF crosses the 64 KiB limit: #GP(0).
        let a = try TestMachine.v86(code: [0xA1, 0xFF, 0xFF])
        #expect(stubVector(a.run()) == 13)
        #expect(a.stack(0) == 0 && a.stack(1) == 0)
        // 32-bit addressing past FFFFh: #GP(0) for DS, #SS(0) for SS.
        let b = try TestMachine.v86(code: [0x66, 0xBB, 0x00, 0x00, 0x01, 0x00, 0x67, 0x8A, 0x03])
        #expect(stubVector(b.run()) == 13)
        #expect(b.stack(0) == 0 && b.stack(1) == 6)
        let c = try TestMachine.v86(code: [0x66, 0xBD, 0x00, 0x00, 0x01, 0x00, 0x67, 0x8A, 0x45, 0x00])
        #expect(stubVector(c.run()) == 12)
        #expect(c.stack(0) == 0 && c.stack(1) == 6)
        // A word push at SP = 1 lands at SS:FFFF: #SS(0), SP unchanged.
        let d = try TestMachine.v86(code: [0x50]) { s in s.esp = 1 }
        #expect(stubVector(d.run()) == 12)
        #expect(d.stack(0) == 0 && d.stack(1) == 0 && d.stack(4) == 1)
        // A far jump beyond FFFFh (66h: 32-bit offset): #GP(0).
        let e = try TestMachine.v86(code: [0x66, 0xEA, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10])
        #expect(stubVector(e.run()) == 13)
        #expect(e.stack(0) == 0 && e.stack(1) == 0)
    }

    @Test func sixteenBitAddressesWrapWithoutFaults() throws {
        let code: [UInt8] = [
            0xBB, 0xFF, 0xFF,                    // mov bx, FFFFh
            0xBE, 0x02, 0x00,                    // mov si, 2
            0x8A, 0x00,                          // mov al, [bx+si]       -> DS:0001 (wraps)
            0xBC, 0x00, 0x00,                    // mov sp, 0
            0x50,                                // push ax               -> SP = FFFEh
            0xB9, 0xFF, 0xFF,                    // mov cx, FFFFh
            0x8E, 0xC1,                          // mov es, cx            (base FFFF0h)
            0x26, 0xC6, 0x06, 0x10, 0x00, 0x5A,  // mov byte es:[0010h], 5Ah -> linear 100000h (no A20 wrap)
            0xF4,                                // hlt
        ]
        let m = try TestMachine.v86(code: code)
        try m.memory.write8(0x30001, 0x77)
        #expect(stubVector(m.run()) == 13)
        let s = m.cpu.state
        #expect(s.eax & 0xFF == 0x77)
        #expect(m.v86Frame(errorCode: true).esp == 0xFFFE && m.v86Frame(errorCode: true).es == 0xFFFF)
        #expect(try m.memory.read16(0x2FFFE) == 0x0077)
        #expect(try m.memory.read8(0x10_0000) == 0x5A)
        #expect(try m.memory.read8(0x0) == 0)
    }
}
