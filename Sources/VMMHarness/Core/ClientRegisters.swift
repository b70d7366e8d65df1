/// The VMM's register frame, the DDK's `Client_Reg_Struc` (6Ch bytes). Offsets are those of
/// VMM.INC; see the table in the README and `ClientRegisters.Offset`.
///
/// The first 30h bytes are what the guest's IDT stub leaves on the stack (a PUSHAD image, the
/// error code, then EIP, CS and EFLAGS as the CPU pushed them) — the DDK's "VMM re-entrant fault
/// stack frame". The host completes the rest from the vCPU state.
public struct ClientRegisters: Equatable, Hashable, Sendable {
    /// Byte offsets of each field, named as in VMM.INC (`Client_EDI` = `edi`, ...).
    public enum Offset {
        public static let edi = 0x00
        public static let esi = 0x04
        public static let ebp = 0x08
        /// The ESP slot of the PUSHAD image (not used on resume).
        public static let pushadESP = 0x0C
        public static let ebx = 0x10
        public static let edx = 0x14
        public static let ecx = 0x18
        public static let eax = 0x1C
        public static let error = 0x20
        public static let eip = 0x24
        public static let cs = 0x28
        public static let eflags = 0x2C
        public static let esp = 0x30
        public static let ss = 0x34
        public static let es = 0x38
        public static let ds = 0x3C
        public static let fs = 0x40
        public static let gs = 0x44
        public static let altEIP = 0x48
        public static let altCS = 0x4C
        public static let altEFlags = 0x50
        public static let altESP = 0x54
        public static let altSS = 0x58
        public static let altES = 0x5C
        public static let altDS = 0x60
        public static let altFS = 0x64
        public static let altGS = 0x68
    }

    /// Size of `Client_Reg_Struc` in bytes.
    public static let size = 0x6C
    /// Size of the part the IDT stub builds in guest memory (PUSHAD image, error, EIP, CS, EFLAGS).
    public static let stubFrameSize = 0x30

    public var edi: UInt32 = 0
    public var esi: UInt32 = 0
    public var ebp: UInt32 = 0
    /// The ESP value PUSHAD stored (the stub's stack pointer; informational).
    public var pushadESP: UInt32 = 0
    public var ebx: UInt32 = 0
    public var edx: UInt32 = 0
    public var ecx: UInt32 = 0
    public var eax: UInt32 = 0
    /// `Client_Error`: the CPU's error code, or 0 where the vector pushes none.
    public var error: UInt32 = 0
    public var eip: UInt32 = 0
    public var cs: UInt16 = 0
    public var eflags: UInt32 = 0
    public var esp: UInt32 = 0
    public var ss: UInt16 = 0
    public var es: UInt16 = 0
    public var ds: UInt16 = 0
    public var fs: UInt16 = 0
    public var gs: UInt16 = 0
    public var altEIP: UInt32 = 0
    public var altCS: UInt16 = 0
    public var altEFlags: UInt32 = 0
    public var altESP: UInt32 = 0
    public var altSS: UInt16 = 0
    public var altES: UInt16 = 0
    public var altDS: UInt16 = 0
    public var altFS: UInt16 = 0
    public var altGS: UInt16 = 0

    public init() {}

    /// Decodes a frame from its 6Ch-byte image. Returns nil if `bytes` is too short.
    public init?(bytes: [UInt8]) {
        guard bytes.count >= Self.size else { return nil }
        func d(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        func w(_ o: Int) -> UInt16 { UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8 }
        typealias O = Offset
        edi = d(O.edi); esi = d(O.esi); ebp = d(O.ebp); pushadESP = d(O.pushadESP)
        ebx = d(O.ebx); edx = d(O.edx); ecx = d(O.ecx); eax = d(O.eax)
        error = d(O.error); eip = d(O.eip); cs = w(O.cs); eflags = d(O.eflags)
        esp = d(O.esp); ss = w(O.ss); es = w(O.es); ds = w(O.ds); fs = w(O.fs); gs = w(O.gs)
        altEIP = d(O.altEIP); altCS = w(O.altCS); altEFlags = d(O.altEFlags); altESP = d(O.altESP)
        altSS = w(O.altSS); altES = w(O.altES); altDS = w(O.altDS); altFS = w(O.altFS); altGS = w(O.altGS)
    }

    /// The 6Ch-byte image. Word fields occupy the low half of their dword slot; the high half is 0.
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        func d(_ o: Int, _ v: UInt32) {
            out[o] = UInt8(truncatingIfNeeded: v); out[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
            out[o + 2] = UInt8(truncatingIfNeeded: v >> 16); out[o + 3] = UInt8(truncatingIfNeeded: v >> 24)
        }
        func w(_ o: Int, _ v: UInt16) { d(o, UInt32(v)) }
        typealias O = Offset
        d(O.edi, edi); d(O.esi, esi); d(O.ebp, ebp); d(O.pushadESP, pushadESP)
        d(O.ebx, ebx); d(O.edx, edx); d(O.ecx, ecx); d(O.eax, eax)
        d(O.error, error); d(O.eip, eip); w(O.cs, cs); d(O.eflags, eflags)
        d(O.esp, esp); w(O.ss, ss); w(O.es, es); w(O.ds, ds); w(O.fs, fs); w(O.gs, gs)
        d(O.altEIP, altEIP); w(O.altCS, altCS); d(O.altEFlags, altEFlags); d(O.altESP, altESP)
        w(O.altSS, altSS); w(O.altES, altES); w(O.altDS, altDS); w(O.altFS, altFS); w(O.altGS, altGS)
        return out
    }

    /// Client_AL / Client_AX views are the low parts of `eax`; provided for DDK-style code.
    public var ax: UInt16 {
        get { UInt16(truncatingIfNeeded: eax) }
        set { eax = (eax & 0xFFFF_0000) | UInt32(newValue) }
    }
    public var al: UInt8 {
        get { UInt8(truncatingIfNeeded: eax) }
        set { eax = (eax & 0xFFFF_FF00) | UInt32(newValue) }
    }
}

extension ClientRegisters {
    /// Reads the fields at 00h..`count` (a multiple of 4, at most 6Ch) from guest memory, dword by
    /// dword (no intermediate buffers: this is on every fault's path). Other fields are left as they are.
    public mutating func load(from memory: GuestMemory, at address: UInt32, count: Int) throws(MemoryAccessError) {
        guard memory.contains(UInt64(address), count: count) else {
            throw MemoryAccessError(address: UInt64(address), length: count, isWrite: false)
        }
        @inline(__always) func d(_ o: Int) throws(MemoryAccessError) -> UInt32 { try memory.read32(address &+ UInt32(o)) }
        @inline(__always) func w(_ o: Int) throws(MemoryAccessError) -> UInt16 { UInt16(truncatingIfNeeded: try d(o)) }
        typealias O = Offset
        edi = try d(O.edi); esi = try d(O.esi); ebp = try d(O.ebp); pushadESP = try d(O.pushadESP)
        ebx = try d(O.ebx); edx = try d(O.edx); ecx = try d(O.ecx); eax = try d(O.eax)
        error = try d(O.error); eip = try d(O.eip); cs = try w(O.cs); eflags = try d(O.eflags)
        guard count > O.esp else { return }
        esp = try d(O.esp); ss = try w(O.ss)
        guard count > O.es else { return }
        es = try w(O.es); ds = try w(O.ds); fs = try w(O.fs); gs = try w(O.gs)
        guard count > O.altEIP else { return }
        altEIP = try d(O.altEIP); altCS = try w(O.altCS); altEFlags = try d(O.altEFlags); altESP = try d(O.altESP)
        altSS = try w(O.altSS); altES = try w(O.altES); altDS = try w(O.altDS); altFS = try w(O.altFS); altGS = try w(O.altGS)
    }

    /// Writes the fields at 00h..`count` (a multiple of 4, at most 6Ch) into guest memory.
    public func store(to memory: GuestMemory, at address: UInt32, count: Int) throws(MemoryAccessError) {
        guard memory.contains(UInt64(address), count: count) else {
            throw MemoryAccessError(address: UInt64(address), length: count, isWrite: true)
        }
        @inline(__always) func d(_ o: Int, _ v: UInt32) throws(MemoryAccessError) { try memory.write32(address &+ UInt32(o), v) }
        typealias O = Offset
        try d(O.edi, edi); try d(O.esi, esi); try d(O.ebp, ebp); try d(O.pushadESP, pushadESP)
        try d(O.ebx, ebx); try d(O.edx, edx); try d(O.ecx, ecx); try d(O.eax, eax)
        try d(O.error, error); try d(O.eip, eip); try d(O.cs, UInt32(cs)); try d(O.eflags, eflags)
        guard count > O.esp else { return }
        try d(O.esp, esp); try d(O.ss, UInt32(ss))
        guard count > O.es else { return }
        try d(O.es, UInt32(es)); try d(O.ds, UInt32(ds)); try d(O.fs, UInt32(fs)); try d(O.gs, UInt32(gs))
        guard count > O.altEIP else { return }
        try d(O.altEIP, altEIP); try d(O.altCS, UInt32(altCS)); try d(O.altEFlags, altEFlags); try d(O.altESP, altESP)
        try d(O.altSS, UInt32(altSS)); try d(O.altES, UInt32(altES)); try d(O.altDS, UInt32(altDS))
        try d(O.altFS, UInt32(altFS)); try d(O.altGS, UInt32(altGS))
    }
}
