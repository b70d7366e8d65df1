/// The guest runtime (`guest/runtime.S`): GDT, IDT with gates for 00h–4Fh, TSS and the IDT stubs.
/// Its bytes are generated into `RuntimeImageData.swift` by `scripts/build-guest.sh`.
public enum RuntimeImage {
    /// The header at the start of the runtime, describing where its tables live.
    public struct Layout: Equatable, Sendable {
        public var version: UInt32
        public var gdt: TableRegister
        public var idt: TableRegister
        public var tssBase: UInt32
        public var tssLimit: UInt32
        public var stubBase: UInt32
        public var stubSize: UInt32
        public var vectorCount: UInt32
        public var faultPortBase: UInt32
    }

    /// Parses and validates the header of `bytes` (loaded at `MemoryMap.runtimeBase`).
    public static func layout(of bytes: [UInt8] = bytes) throws(HarnessError) -> Layout {
        guard bytes.count >= 0x30, bytes.count <= Int(MemoryMap.runtimeLimit - MemoryMap.runtimeBase),
              bytes[0] == 0x56, bytes[1] == 0x4D, bytes[2] == 0x4D, bytes[3] == 0x48 else {
            throw .badFile(path: "runtime image", reason: "missing VMMH header")
        }
        func d(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        let l = Layout(version: d(4), gdt: TableRegister(base: d(8), limit: UInt16(truncatingIfNeeded: d(12))),
                       idt: TableRegister(base: d(16), limit: UInt16(truncatingIfNeeded: d(20))),
                       tssBase: d(24), tssLimit: d(28), stubBase: d(32), stubSize: d(36),
                       vectorCount: d(40), faultPortBase: d(44))
        let end = MemoryMap.runtimeBase + UInt32(bytes.count)
        guard l.version == 1, l.vectorCount == UInt32(Ports.vectorCount), l.faultPortBase == UInt32(Ports.faultBase),
              l.gdt.base >= MemoryMap.runtimeBase, l.gdt.base + UInt32(l.gdt.limit) < end,
              l.idt.base >= MemoryMap.runtimeBase, l.idt.base + UInt32(l.idt.limit) < end,
              l.tssBase >= MemoryMap.runtimeBase, l.tssBase + l.tssLimit < end,
              l.stubBase + l.stubSize * l.vectorCount <= end else {
            throw .badFile(path: "runtime image", reason: "header does not match the memory map")
        }
        return l
    }

    /// Address of the IDT stub for `vector`.
    public static func stubAddress(vector: UInt8, layout: Layout) -> UInt32 {
        layout.stubBase + UInt32(vector) * layout.stubSize
    }
}
