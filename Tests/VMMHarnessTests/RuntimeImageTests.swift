import Foundation
import Testing
@testable import VMMHarness

@Suite struct RuntimeImageTests {
    @Test func headerDescribesTheMemoryMap() throws {
        let l = try RuntimeImage.layout()
        #expect(l.gdt.base == 0x1100 && l.gdt.limit == 0x3F)
        #expect(l.idt.base == 0x1200 && l.idt.limit == 0x60 * 8 - 1)
        #expect(l.tssBase == 0x1500 && l.tssLimit == 0x67)
        #expect(l.vectorCount == 0x60 && l.faultPortBase == 0x80)
    }

    @Test func everyGateLeadsToAStubThatExitsOnItsOwnPort() throws {
        let l = try RuntimeImage.layout()
        let bytes = RuntimeImage.bytes
        func at(_ addr: UInt32) -> Int { Int(addr - MemoryMap.runtimeBase) }
        for v in 0..<0x60 {
            var raw: UInt64 = 0
            for i in 0..<8 { raw |= UInt64(bytes[at(l.idt.base) + v * 8 + i]) << (8 * i) }
            let gate = GateDescriptor(raw: raw)
            #expect(gate.kind == .interrupt32 && gate.present && gate.selector == Selectors.ring0Code)
            #expect(gate.dpl == ((v == 3 || v == 4 || (0x30..<0x50).contains(v)) ? 3 : 0), "vector \(v)")
            #expect(gate.offset == RuntimeImage.stubAddress(vector: UInt8(v), layout: l))
            let stub = Array(bytes[at(gate.offset)..<at(gate.offset) + 6])
            if ExceptionNames.hasErrorCode(UInt8(v)) {
                #expect(Array(stub.prefix(3)) == [0x60, 0xE6, UInt8(0x80 + v)], "vector \(v)")
            } else {
                #expect(Array(stub.prefix(5)) == [0x6A, 0x00, 0x60, 0xE6, UInt8(0x80 + v)], "vector \(v)")
            }
        }
    }

    @Test func gdtMatchesTheSelectors() throws {
        let l = try RuntimeImage.layout()
        let memory = try GuestMemory(size: 1 << 20)
        try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
        let loader = SegmentLoader(memory: memory, gdtr: l.gdt)
        #expect(try loader.loadCode(Selectors.ring0Code) == .flatCode(selector: 0x28, dpl: 0))
        #expect(try loader.loadCode(Selectors.ring3Code) == .flatCode(selector: 0x1B, dpl: 3))
        #expect(try loader.loadStack(Selectors.ring0Data, cpl: 0) == .flatData(selector: 0x30, dpl: 0))
        #expect(try loader.loadStack(Selectors.ring3Data, cpl: 3) == .flatData(selector: 0x23, dpl: 3))
        #expect(throws: SegmentLoadError.self) { try loader.loadStack(Selectors.notPresentData, cpl: 0) }
        #expect(throws: SegmentLoadError.self) { try loader.loadCode(Selectors.ring0Data) }
        #expect(throws: SegmentLoadError.self) { try loader.loadCode(0x1234) }
        let tss = SegmentDescriptor(raw: try memory.read64(l.gdt.base + 8))
        #expect(tss.base == l.tssBase && tss.type == 9 && !tss.isCodeOrData)
        #expect(try memory.read32(l.tssBase + 4) == MemoryMap.ring0FaultStackTop)
        #expect(try memory.read32(l.tssBase + 8) == UInt32(Selectors.ring0Data))
    }

    @Test(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld"))
    func committedBytesAreAFreshBuildOfTheSource() throws {
        let tc = try #require(TestSupport.toolchain)
        let source = try String(contentsOfFile: "\(TestSupport.root)/guest/runtime.S", encoding: .utf8)
        let fresh = try GuestAssembler.assemble(source: source, name: "runtime.S", base: MemoryMap.runtimeBase, toolchain: tc)
        #expect(fresh.bytes == RuntimeImage.bytes, "run scripts/build-guest.sh after editing guest/runtime.S")
    }

    @Test func embeddedIncludesMatchTheFiles() throws {
        let dir = "\(TestSupport.root)/guest/include"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".inc") }
        #expect(Set(files) == Set(GuestIncludes.files.keys))
        for f in files {
            let text = try String(contentsOfFile: "\(dir)/\(f)", encoding: .utf8)
            #expect(GuestIncludes.files[f].map { $0 + "\n" } == text || GuestIncludes.files[f] == text,
                    "run scripts/build-guest.sh after editing guest/include/\(f)")
        }
    }
}
