import Testing
@testable import VMMHarness

/// One port access of a string I/O instruction, with the registers once the element is done
/// (for IN/INS: after `completePortIn`).
private struct Element: Equatable, CustomStringConvertible {
    var stop: InterpreterStop
    var esi: UInt32
    var edi: UInt32
    var ecx: UInt32
    var eip: UInt32

    var description: String {
        "\(stop) ESI=\(hex(esi)) EDI=\(hex(edi)) ECX=\(hex(ecx)) EIP=\(hex(eip))"
    }
}

/// Runs `m` until a stop that is not an access to `port`, answering each IN/INS element with the
/// next of `inputs`. Returns the accesses to `port` in order and the stop that ended the run.
private func drive(_ m: TestMachine, port: UInt16, inputs: [UInt32] = [], limit: Int = 64) -> (elements: [Element], end: InterpreterStop) {
    var elements: [Element] = []
    var next = inputs.makeIterator()
    for _ in 0..<limit {
        let stop = m.run()
        switch stop {
        case let .portOut(p, _, _) where p == port:
            break
        case let .portIn(p, _) where p == port:
            m.cpu.completePortIn(value: next.next() ?? 0xDEAD_BEEF)
        default:
            return (elements, stop)
        }
        let s = m.cpu.state
        elements.append(Element(stop: stop, esi: s.esi, edi: s.edi, ecx: s.ecx, eip: s.eip))
    }
    return (elements, .budgetExhausted)
}

private let code = TestMachine.code
private let com1: UInt16 = 0x3F8
private let com1DX = UInt32(com1)

/// INS/OUTS (SDM vol. 2B): one stop per element, REP restarting the instruction, address and
/// operand size, direction, segments, the I/O permission check and fault ordering.
@Suite struct InterpreterStringIOTests {
    // MARK: - OUTS

    @Test func repOutsbForward() throws {
        // rep outsb; hlt. DX's upper half is not part of the port.
        let m = try TestMachine(code: [0xF3, 0x6E, 0xF4]) { s in s.esi = 0x40000; s.ecx = 3; s.edx = 0x1234_03F8 }
        try m.memory.writeBytes(0x40000, [0x11, 0x22, 0x33, 0x44])
        let (elements, end) = drive(m, port: com1)
        #expect(end == .halt)
        #expect(elements == [
            Element(stop: .portOut(port: com1, size: 1, value: 0x11), esi: 0x40001, edi: 0, ecx: 2, eip: code),
            Element(stop: .portOut(port: com1, size: 1, value: 0x22), esi: 0x40002, edi: 0, ecx: 1, eip: code),
            Element(stop: .portOut(port: com1, size: 1, value: 0x33), esi: 0x40003, edi: 0, ecx: 0, eip: code + 2),
        ])
    }

    @Test func repOutswBackward() throws {
        // std; rep outsw; hlt
        let m = try TestMachine(code: [0xFD, 0xF3, 0x66, 0x6F, 0xF4]) { s in s.esi = 0x40004; s.ecx = 3; s.edx = 0x2F8 }
        try m.memory.writeBytes(0x40000, [0x01, 0x10, 0x02, 0x20, 0x03, 0x30])
        let (elements, end) = drive(m, port: 0x2F8)
        #expect(end == .halt)
        #expect(elements == [
            Element(stop: .portOut(port: 0x2F8, size: 2, value: 0x3003), esi: 0x40002, edi: 0, ecx: 2, eip: code + 1),
            Element(stop: .portOut(port: 0x2F8, size: 2, value: 0x2002), esi: 0x40000, edi: 0, ecx: 1, eip: code + 1),
            Element(stop: .portOut(port: 0x2F8, size: 2, value: 0x1001), esi: 0x3FFFE, edi: 0, ecx: 0, eip: code + 4),
        ])
        #expect(m.cpu.state.eflags & EFlags.df != 0)
    }

    @Test func repOutsdWithSegmentOverride() throws {
        // rep outsd fs:[esi] (FS base 40000h); hlt. DS would read zeros at 0..7.
        let m = try TestMachine(code: [0xF3, 0x64, 0x6F, 0xF4]) { s in
            s.fs.base = 0x40000
            s.esi = 0x10
            s.ecx = 2
            s.edx = com1DX
        }
        try m.memory.write32(0x40010, 0xCAFE_F00D)
        try m.memory.write32(0x40014, 0x1234_5678)
        let (elements, end) = drive(m, port: com1)
        #expect(end == .halt)
        #expect(elements.map(\.stop) == [.portOut(port: com1, size: 4, value: 0xCAFE_F00D), .portOut(port: com1, size: 4, value: 0x1234_5678)])
        #expect(elements.map(\.esi) == [0x14, 0x18] && elements.map(\.ecx) == [1, 0])
    }

    @Test func outsWithSixteenBitAddressSize() throws {
        // 67h rep outsb: SI and CX wrap at 16 bits; the upper halves stay.
        let m = try TestMachine(code: [0x67, 0xF3, 0x6E, 0xF4]) { s in s.esi = 0xABCD_FFFF; s.ecx = 0x1234_0002; s.edx = com1DX }
        try m.memory.write8(0xFFFF, 0x5A)
        try m.memory.write8(0x0000, 0xA5)
        let (elements, end) = drive(m, port: com1)
        #expect(end == .halt)
        #expect(elements == [
            Element(stop: .portOut(port: com1, size: 1, value: 0x5A), esi: 0xABCD_0000, edi: 0, ecx: 0x1234_0001, eip: code),
            Element(stop: .portOut(port: com1, size: 1, value: 0xA5), esi: 0xABCD_0001, edi: 0, ecx: 0x1234_0000, eip: code + 3),
        ])
    }

    @Test func outsWithoutRepAndRepneAndZeroCount() throws {
        // outsb: one element, ECX untouched.
        let one = try TestMachine(code: [0x6E, 0xF4]) { s in s.esi = 0x40000; s.ecx = 5; s.edx = com1DX }
        try one.memory.write8(0x40000, 0x77)
        let a = drive(one, port: com1)
        #expect(a.end == .halt)
        #expect(a.elements == [Element(stop: .portOut(port: com1, size: 1, value: 0x77), esi: 0x40001, edi: 0, ecx: 5, eip: code + 1)])
        // F2 repeats INS/OUTS like F3.
        let repne = try TestMachine(code: [0xF2, 0x6E, 0xF4]) { s in s.esi = 0x40000; s.ecx = 2; s.edx = com1DX }
        #expect(drive(repne, port: com1).elements.count == 2)
        // REP with ECX = 0: no port access at all.
        let none = try TestMachine(code: [0xF3, 0x6E, 0xF3, 0x6C, 0xF4]) { s in s.esi = 0x40000; s.edi = 0x41000; s.edx = com1DX }
        let c = drive(none, port: com1)
        #expect(c.end == .halt && c.elements.isEmpty)
        #expect(none.cpu.state.esi == 0x40000 && none.cpu.state.edi == 0x41000)
    }

    // MARK: - INS

    @Test func repInsbForward() throws {
        let m = try TestMachine(code: [0xF3, 0x6C, 0xF4]) { s in s.edi = 0x41000; s.ecx = 3; s.edx = com1DX }
        // The first element stops with nothing changed yet: EIP at the instruction, EDI, ECX and memory as they were.
        #expect(m.run() == .portIn(port: com1, size: 1))
        #expect(m.cpu.state.eip == code && m.cpu.state.edi == 0x41000 && m.cpu.state.ecx == 3)
        #expect(try m.memory.read8(0x41000) == 0)
        m.cpu.completePortIn(value: 0xFFFF_FFA1)
        #expect(try m.memory.read8(0x41000) == 0xA1 && m.memory.read8(0x41001) == 0)
        #expect(m.cpu.state.edi == 0x41001 && m.cpu.state.ecx == 2 && m.cpu.state.eip == code)
        let (elements, end) = drive(m, port: com1, inputs: [0xA2, 0xA3])
        #expect(end == .halt)
        #expect(elements == [
            Element(stop: .portIn(port: com1, size: 1), esi: 0, edi: 0x41002, ecx: 1, eip: code),
            Element(stop: .portIn(port: com1, size: 1), esi: 0, edi: 0x41003, ecx: 0, eip: code + 2),
        ])
        #expect(try m.memory.readBytes(0x41000, count: 4) == [0xA1, 0xA2, 0xA3, 0x00])
    }

    @Test func repInswBackward() throws {
        // std; rep insw; hlt
        let m = try TestMachine(code: [0xFD, 0xF3, 0x66, 0x6D, 0xF4]) { s in s.edi = 0x41004; s.ecx = 3; s.edx = com1DX }
        let (elements, end) = drive(m, port: com1, inputs: [0xBEEF, 0xCAFE, 0xF00D])
        #expect(end == .halt)
        #expect(elements == [
            Element(stop: .portIn(port: com1, size: 2), esi: 0, edi: 0x41002, ecx: 2, eip: code + 1),
            Element(stop: .portIn(port: com1, size: 2), esi: 0, edi: 0x41000, ecx: 1, eip: code + 1),
            Element(stop: .portIn(port: com1, size: 2), esi: 0, edi: 0x40FFE, ecx: 0, eip: code + 4),
        ])
        #expect(try m.memory.read16(0x41004) == 0xBEEF && m.memory.read16(0x41002) == 0xCAFE && m.memory.read16(0x41000) == 0xF00D)
        #expect(try m.memory.read16(0x40FFE) == 0)
    }

    @Test func insWithSixteenBitAddressSizeIgnoresOverrides() throws {
        // 67h rep insd with an FS prefix: the destination is always ES:DI; DI and CX wrap at 16 bits.
        let m = try TestMachine(code: [0x67, 0xF3, 0x64, 0x6D, 0xF4]) { s in
            s.es.base = 0x50000
            s.fs.base = 0x60000
            s.edi = 0x7777_FFFC
            s.ecx = 0x5555_0002
            s.edx = com1DX
        }
        let (elements, end) = drive(m, port: com1, inputs: [0x1111_2222, 0x3333_4444])
        #expect(end == .halt)
        #expect(elements.map(\.edi) == [0x7777_0000, 0x7777_0004] && elements.map(\.ecx) == [0x5555_0001, 0x5555_0000])
        #expect(try m.memory.read32(0x5FFFC) == 0x1111_2222 && m.memory.read32(0x50000) == 0x3333_4444)
        #expect(try m.memory.read32(0x6FFFC) == 0 && m.memory.read32(0x60000) == 0)
    }

    @Test func insDestinationFaultsBeforeThePortIsRead() throws {
        // ES read-only: #GP(0) with no port access, nothing changed.
        let ro = try TestMachine(code: [0xF3, 0x6C, 0xF4]) { s in s.es.type = 0x1; s.edi = 0x41000; s.ecx = 2; s.edx = com1DX }
        let a = drive(ro, port: com1)
        #expect(a.elements.isEmpty && stubVector(a.end) == 13)
        #expect(ro.stack(0) == 0 && ro.stack(1) == code)
        #expect(ro.cpu.state.edi == 0x41000 && ro.cpu.state.ecx == 2)
        // Beyond the ES limit.
        let limit = try TestMachine(code: [0x66, 0x6D, 0xF4]) { s in s.es.limit = 0x41001; s.edi = 0x41001; s.edx = com1DX }
        let b = drive(limit, port: com1)
        #expect(b.elements.isEmpty && stubVector(b.end) == 13)
        // A REP INS whose third element crosses into a not-present page: two elements done and
        // kept, then #PF (write, supervisor) before the third port read; CR2 = the missing page.
        let paged = try TestMachine(code: [0xF3, 0x66, 0x6D, 0xF4]) { s in
            s.cr0 |= CR0.pg
            s.cr3 = 0x8000
            s.edi = 0x41FFB
            s.ecx = 4
            s.edx = com1DX
        }
        try identityMap(paged.memory) { page in page == 0x42 ? 0 : (page << 12) | 7 }
        let c = drive(paged, port: com1, inputs: [0x0201, 0x0403, 0x0605])
        #expect(c.elements.count == 2 && stubVector(c.end) == 14)
        #expect(paged.cpu.state.cr2 == 0x42000 && paged.stack(0) == 2 && paged.stack(1) == code)
        #expect(paged.cpu.state.edi == 0x41FFF && paged.cpu.state.ecx == 2)
        #expect(try paged.memory.readBytes(0x41FFB, count: 5) == [0x01, 0x02, 0x03, 0x04, 0x00])
        // The destination outside guest memory: the MMIO stop, before the port.
        let mmio = try TestMachine(code: [0x6C, 0xF4]) { s in s.edi = 0xF000_0000; s.edx = com1DX }
        #expect(mmio.run() == .mmio(address: 0xF000_0000, isWrite: true, length: 1, data: 0))
        #expect(mmio.cpu.state.eip == code && !mmio.cpu.portInPending)
    }

    @Test func insAcrossAPageBoundaryWritesBothFrames() throws {
        // Linear 41000h maps to frame 50000h: the word at 40FFFh is split between two frames.
        let m = try TestMachine(code: [0x66, 0x6D, 0xF4]) { s in
            s.cr0 |= CR0.pg
            s.cr3 = 0x8000
            s.edi = 0x40FFF
            s.edx = com1DX
        }
        try identityMap(m.memory) { page in page == 0x41 ? 0x50000 | 7 : (page << 12) | 7 }
        #expect(m.run() == .portIn(port: com1, size: 2))
        m.cpu.completePortIn(value: 0xBBAA)
        #expect(try m.memory.read8(0x40FFF) == 0xAA && m.memory.read8(0x50000) == 0xBB && m.memory.read8(0x41000) == 0)
        #expect(m.run() == .halt)
    }

    @Test func outsSourceFaultKeepsEarlierElements() throws {
        // The third element's source lies beyond the DS limit: two elements out, then #GP(0)
        // with ESI/ECX as the two elements left them.
        let m = try TestMachine(code: [0xF3, 0x6E, 0xF4]) { s in s.ds.limit = 0x40001; s.esi = 0x40000; s.ecx = 5; s.edx = com1DX }
        let (elements, end) = drive(m, port: com1)
        #expect(elements.count == 2 && stubVector(end) == 13)
        #expect(m.cpu.state.esi == 0x40002 && m.cpu.state.ecx == 3)
        #expect(m.stack(1) == code)
    }

    // MARK: - I/O permission

    /// Ring 3, IOPL 0, a TSS with a bitmap for ports 000h–3FFh at offset 68h (limit E8h), where
    /// port 3F8h is denied and everything else allowed.
    private func ring3WithBitmap(_ bytes: [UInt8], configure: (inout CPUState) -> Void = { _ in }) throws -> TestMachine {
        let m = try TestMachine(code: bytes, ring3: true) { s in
            s.tr.limit = 0x68 + 0x80
            s.esi = 0x40000
            s.edi = 0x41000
            configure(&s)
        }
        try m.memory.write16(TestMachine.tss + 0x66, 0x68)
        try m.memory.write8(TestMachine.tss + 0x68 + (0x3F8 >> 3), 0x01)
        return m
    }

    @Test func bitmapDeniesAtCPL3() throws {
        for bytes: [UInt8] in [[0xF3, 0x6E], [0xF3, 0x6C], [0x6F], [0xEE], [0xEC]] {
            let m = try ring3WithBitmap(bytes) { s in s.ecx = 2; s.edx = 0x3F8 }
            let (elements, end) = drive(m, port: 0x3F8)
            #expect(elements.isEmpty && stubVector(end) == 13, "\(bytes)")
            #expect(m.stack(0) == 0 && m.stack(1) == code, "\(bytes)")
            #expect(m.cpu.state.ecx == 2 && m.cpu.state.esi == 0x40000 && m.cpu.state.edi == 0x41000, "\(bytes)")
        }
        // A word at 3F7h covers the denied bit of 3F8h.
        let straddle = try ring3WithBitmap([0x66, 0x6F]) { s in s.edx = 0x3F7 }
        #expect(stubVector(straddle.run()) == 13)
        // Port 400h: its bitmap bytes lie beyond the TSS limit.
        let beyond = try ring3WithBitmap([0x6E]) { s in s.edx = 0x400 }
        #expect(stubVector(beyond.run()) == 13)
    }

    @Test func bitmapAllowsAtCPL3() throws {
        // rep outsb; mov cl, 2; rep insb; out dx, al; in al, dx; outsd; int 30h
        let m = try ring3WithBitmap([0xF3, 0x6E, 0xB1, 0x02, 0xF3, 0x6C, 0xEE, 0xEC, 0x6F, 0xCD, 0x30]) { s in
            s.ecx = 2
            s.edx = 0x3F9
            s.eax = 0x5A
        }
        try m.memory.writeBytes(0x40000, [0x11, 0x22, 0x33, 0x44])
        let (elements, end) = drive(m, port: 0x3F9, inputs: [0x91, 0x92, 0x93])
        #expect(stubVector(end) == 0x30)
        #expect(elements.map(\.stop) == [
            .portOut(port: 0x3F9, size: 1, value: 0x11), .portOut(port: 0x3F9, size: 1, value: 0x22),
            .portIn(port: 0x3F9, size: 1), .portIn(port: 0x3F9, size: 1),
            .portOut(port: 0x3F9, size: 1, value: 0x5A), .portIn(port: 0x3F9, size: 1),
            .portOut(port: 0x3F9, size: 4, value: 0x4433),
        ])
        #expect(try m.memory.readBytes(0x41000, count: 2) == [0x91, 0x92])
        #expect(m.cpu.state.eax & 0xFF == 0x93)
        // IOPL 3 at ring 3: no bitmap needed (the TestMachine's TSS has none).
        let iopl3 = try TestMachine(code: [0x6E, 0xF4], ring3: true) { s in s.eflags = 0x3002; s.esi = 0x40000; s.edx = 0x3F8 }
        #expect(iopl3.run() == .portOut(port: 0x3F8, size: 1, value: 0))
    }

    @Test func v86StringIOUsesTheBitmap() throws {
        // V86 mode, IOPL 3: the bitmap still decides. Port 60h allowed; DS:SI = 3000:0010.
        let m = try TestMachine.v86(code: [0xF3, 0x6E, 0xF4], iopl: 3) { s in s.tr.limit = 0x79; s.esi = 0x10; s.ecx = 2; s.edx = 0x60 }
        try m.memory.write16(TestMachine.tss + 0x66, 0x68)
        try m.memory.writeBytes(0x30010, [0xC1, 0xC2])
        let (elements, end) = drive(m, port: 0x60)
        #expect(elements.map(\.stop) == [.portOut(port: 0x60, size: 1, value: 0xC1), .portOut(port: 0x60, size: 1, value: 0xC2)])
        #expect(elements.map(\.esi) == [0x11, 0x12] && elements.map(\.eip) == [0, 2])
        #expect(stubVector(end) == 13)
    }
}

/// Identity-style 32-bit paging for the first 4 MiB: page directory at 8000h, page table at
/// 7000h, entry `i` = `entry(i)`.
private func identityMap(_ memory: GuestMemory, entry: (UInt32) -> UInt32) throws {
    try memory.write32(0x8000, 0x7000 | 7)
    for i in UInt32(0)..<1024 { try memory.write32(0x7000 + 4 * i, entry(i)) }
}
