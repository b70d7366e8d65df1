import Testing
@testable import VMMHarness

@Suite struct ClientRegistersLayoutTests {
    @Test func sizeAndOffsetsMatchTheDDK() {
        #expect(ClientRegisters.size == 0x6C)
        typealias O = ClientRegisters.Offset
        #expect(O.edi == 0x00 && O.esi == 0x04 && O.ebp == 0x08 && O.ebx == 0x10)
        #expect(O.edx == 0x14 && O.ecx == 0x18 && O.eax == 0x1C && O.error == 0x20)
        #expect(O.eip == 0x24 && O.cs == 0x28 && O.eflags == 0x2C && O.esp == 0x30 && O.ss == 0x34)
        #expect(O.es == 0x38 && O.ds == 0x3C && O.fs == 0x40 && O.gs == 0x44)
        #expect(O.altEIP == 0x48 && O.altCS == 0x4C && O.altEFlags == 0x50 && O.altESP == 0x54)
        #expect(O.altSS == 0x58 && O.altES == 0x5C && O.altDS == 0x60 && O.altFS == 0x64 && O.altGS == 0x68)
    }

    @Test func roundTripsThroughBytes() throws {
        var f = ClientRegisters()
        f.eax = 0x1122_3344; f.edi = 1; f.error = 0x1234; f.eip = 0x10_0005; f.cs = 0x28
        f.eflags = 0x202; f.gs = 0x30; f.altGS = 0x23
        let b = f.bytes
        #expect(b.count == 0x6C)
        #expect(b[0x1C] == 0x44 && b[0x1F] == 0x11)
        #expect(b[0x20] == 0x34 && b[0x21] == 0x12)
        #expect(ClientRegisters(bytes: b) == f)
        #expect(ClientRegisters(bytes: Array(b.prefix(0x6B))) == nil)
    }

    @Test func byteViews() {
        var f = ClientRegisters()
        f.eax = 0xAABB_CCDD
        #expect(f.al == 0xDD && f.ax == 0xCCDD)
        f.al = 0x11
        #expect(f.eax == 0xAABB_CC11)
    }
}

@Suite struct DescriptorTests {
    @Test func flatCodeDescriptorMatchesTheClassicEncoding() {
        // 00CF9A000000FFFF is the textbook flat ring-0 32-bit code descriptor.
        let d = SegmentDescriptor(base: 0, limit: 0xFFFFF, type: 0xA, isCodeOrData: true, dpl: 0,
                                  present: true, defaultBig: true, granularity: true)
        #expect(d.raw == 0x00CF_9A00_0000_FFFF)
        #expect(d.limit == 0xFFFF_FFFF && d.base == 0 && d.dpl == 0 && d.present)
        let d3 = SegmentDescriptor(raw: 0x00CF_F200_0000_FFFF)
        #expect(d3.dpl == 3 && d3.type == 2 && d3.isCodeOrData)
    }

    @Test func baseAndByteGranularLimitRoundTrip() {
        let d = SegmentDescriptor(base: 0x1234_5678, limit: 0x67, type: 0x9, isCodeOrData: false, dpl: 0,
                                  present: true, defaultBig: false, granularity: false)
        #expect(d.base == 0x1234_5678 && d.limit == 0x67 && d.type == 9 && !d.isCodeOrData)
    }

    @Test func interruptGate() {
        let g = GateDescriptor(offset: 0x0000_1234, selector: 0x28, kind: .interrupt32, dpl: 0)
        #expect(g.raw == 0x0000_8E00_0028_1234)
        #expect(g.offset == 0x1234 && g.selector == 0x28 && g.kind == .interrupt32 && g.present)
        #expect(GateDescriptor(raw: 0x0000_9E00_0028_1234).kind == nil)
    }
}
