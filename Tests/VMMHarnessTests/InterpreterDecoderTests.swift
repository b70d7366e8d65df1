import Testing
@testable import VMMHarness

@Suite struct InterpreterDecoderTests {
    func ok(_ b: [UInt8]) -> DecodedInstruction? {
        if case let .success(d) = X86Decoder.decode(b) { return d }
        return nil
    }

    @Test func registerForm() throws {
        let d = try #require(ok([0x01, 0xD8]))  // add eax, ebx
        #expect(d.opcode == 0x01 && d.length == 2 && d.mod == 3 && d.reg == 3 && d.rm == 0 && !d.isMemory && d.size == 4)
    }

    @Test func sibWithStackBaseDefaultsToSS() throws {
        let d = try #require(ok([0x8B, 0x44, 0x24, 0x08]))  // mov eax, [esp+8]
        #expect(d.length == 4 && d.base == 4 && d.index == DecodedInstruction.noRegister && d.displacement == 8)
        #expect(d.segment == SegmentIndex.ss && d.isMemory)
    }

    @Test func scaledIndexNoBase() throws {
        let d = try #require(ok([0x8B, 0x04, 0x8D, 0x00, 0x10, 0x00, 0x00]))  // mov eax, [ecx*4+1000h]
        #expect(d.length == 7 && d.base == DecodedInstruction.noRegister && d.index == 1 && d.scale == 2)
        #expect(d.displacement == 0x1000 && d.segment == SegmentIndex.ds)
    }

    @Test func prefixes() throws {
        let a = try #require(ok([0x66, 0xB8, 0x34, 0x12]))
        #expect(a.length == 4 && a.operandSize == 2 && a.immediate == 0x1234)
        let b = try #require(ok([0xF3, 0xA5]))
        #expect(b.rep == 1 && b.length == 2)
        let c = try #require(ok([0x26, 0x8B, 0x00]))
        #expect(c.segment == SegmentIndex.es && c.segmentOverride)
        let e = try #require(ok([0x67, 0x8B, 0x46, 0xFE]))  // mov eax, [bp-2] (16-bit addressing)
        #expect(!e.address32 && e.base == 5 && e.displacement == 0xFFFE && e.segment == SegmentIndex.ss && e.length == 4)
        let f = try #require(ok([0xF0, 0x01, 0x03]))  // lock add [ebx], eax
        #expect(f.lock)
    }

    @Test func immediatesAndFarPointers() throws {
        let e = try #require(ok([0xC8, 0x10, 0x00, 0x01]))
        #expect(e.immediate == 0x10 && e.immediate2 == 1 && e.length == 4)
        let j = try #require(ok([0xEA, 0x78, 0x56, 0x34, 0x12, 0x28, 0x00]))
        #expect(j.immediate == 0x1234_5678 && j.immediate2 == 0x28 && j.length == 7)
        let m = try #require(ok([0xA1, 0x00, 0x10, 0x00, 0x00]))
        #expect(m.isMemory && m.displacement == 0x1000 && m.length == 5)
        let t = try #require(ok([0xF7, 0xC1, 0x01, 0x00, 0x00, 0x00]))  // test ecx, 1
        #expect(t.length == 6 && t.immediate == 1)
        let n = try #require(ok([0xF7, 0xD1]))  // not ecx: no immediate
        #expect(n.length == 2)
        let c = try #require(ok([0x0F, 0x20, 0xC0]))  // mov eax, cr0
        #expect(c.opcode == 0x120 && c.rm == 0 && c.length == 3)
    }

    @Test func invalidForms() {
        #expect(X86Decoder.decode([0xD6]) == .failure(.invalidOpcode))
        #expect(X86Decoder.decode([0xF0, 0x01, 0xC0]) == .failure(.invalidOpcode))  // lock on a register
        #expect(X86Decoder.decode([0xF0, 0x90]) == .failure(.invalidOpcode))
        #expect(X86Decoder.decode([0x8D, 0xC0]) == .failure(.invalidOpcode))  // lea with a register
        #expect(X86Decoder.decode([0xFF, 0xFF]) == .failure(.invalidOpcode))
        #expect(X86Decoder.decode([0x8E, 0xC8]) == .failure(.invalidOpcode))  // mov cs, ax
        #expect(X86Decoder.decode([0x0F, 0x0F]) == .failure(.invalidOpcode))
        #expect(X86Decoder.decode([UInt8](repeating: 0x66, count: 15) + [0x90]) == .failure(.tooLong))
        #expect(X86Decoder.decode([0xB8, 0x01]) == .failure(.truncated(needed: 5)))
    }
}
