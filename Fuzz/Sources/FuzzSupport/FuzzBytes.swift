/// A cursor over a fuzzer input. Reading past the end yields zeros, so every input, including the
/// empty one, decodes to some configuration: the fuzzer never wastes runs on "too short".
public struct FuzzBytes {
    private let bytes: [UInt8]
    /// Bytes consumed so far.
    public private(set) var offset = 0

    /// Wraps a copy of `bytes`.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The next byte, or 0 past the end.
    public mutating func u8() -> UInt8 {
        guard offset < bytes.count else { offset += 1; return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// The next little-endian word, zero-extended past the end.
    public mutating func u16() -> UInt16 {
        UInt16(u8()) | UInt16(u8()) << 8
    }

    /// The next little-endian dword, zero-extended past the end.
    public mutating func u32() -> UInt32 {
        UInt32(u16()) | UInt32(u16()) << 16
    }

    /// Everything not consumed yet, at most `limit` bytes.
    public func rest(limit: Int) -> [UInt8] {
        guard offset < bytes.count else { return [] }
        return Array(bytes[offset..<min(bytes.count, offset + limit)])
    }
}
