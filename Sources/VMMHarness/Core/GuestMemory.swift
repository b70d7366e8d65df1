#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An access the guest or the host tried outside guest memory.
public struct MemoryAccessError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Guest-physical address of the first byte.
    public var address: UInt64
    /// Number of bytes in the access.
    public var length: Int
    /// Whether it was a write.
    public var isWrite: Bool

    public var description: String {
        let hex = String(address, radix: 16, uppercase: true)
        return "\(isWrite ? "write" : "read") of \(length) byte(s) at \(hex)h is outside guest memory"
    }
}

/// The guest's physical memory: one anonymous mapping that both backends use directly
/// (KVM maps it into the VM with KVM_SET_USER_MEMORY_REGION; the interpreter reads it).
///
/// Every accessor checks bounds, so no guest-controlled address can make the host touch
/// memory outside the mapping. Addresses are guest-physical; paging, where enabled, is the
/// backends' business.
public final class GuestMemory: @unchecked Sendable {
    /// Size in bytes (a multiple of 4 KiB).
    public let size: Int
    /// Start of the host mapping. Only valid while `self` is alive.
    public let base: UnsafeMutableRawPointer

    /// Maps `size` bytes of zeroed memory.
    public init(size: Int) throws(HarnessError) {
        guard size > 0, size % 4096 == 0, size <= 1 << 32 else {
            throw .invalidArgument("guest memory size \(size) must be a positive multiple of 4096 up to 4 GiB")
        }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw .system(call: "mmap(guest memory, \(size) bytes)", errno: .current)
        }
        self.base = p
        self.size = size
    }

    deinit {
        munmap(base, size)
    }

    /// Whether `[address, address + count)` lies inside guest memory.
    @inline(__always)
    public func contains(_ address: UInt64, count: Int) -> Bool {
        count >= 0 && address <= UInt64(size) && UInt64(count) <= UInt64(size) - address
    }

    @inline(__always)
    private func check(_ address: UInt64, _ count: Int, write: Bool) throws(MemoryAccessError) {
        guard contains(address, count: count) else {
            throw MemoryAccessError(address: address, length: count, isWrite: write)
        }
    }

    /// Reads one byte.
    @inline(__always)
    public func read8(_ address: UInt32) throws(MemoryAccessError) -> UInt8 {
        try check(UInt64(address), 1, write: false)
        return base.load(fromByteOffset: Int(address), as: UInt8.self)
    }

    /// Reads a little-endian word.
    @inline(__always)
    public func read16(_ address: UInt32) throws(MemoryAccessError) -> UInt16 {
        try check(UInt64(address), 2, write: false)
        return UInt16(littleEndian: base.loadUnaligned(fromByteOffset: Int(address), as: UInt16.self))
    }

    /// Reads a little-endian dword.
    @inline(__always)
    public func read32(_ address: UInt32) throws(MemoryAccessError) -> UInt32 {
        try check(UInt64(address), 4, write: false)
        return UInt32(littleEndian: base.loadUnaligned(fromByteOffset: Int(address), as: UInt32.self))
    }

    /// Reads a little-endian qword.
    @inline(__always)
    public func read64(_ address: UInt32) throws(MemoryAccessError) -> UInt64 {
        try check(UInt64(address), 8, write: false)
        return UInt64(littleEndian: base.loadUnaligned(fromByteOffset: Int(address), as: UInt64.self))
    }

    /// Writes one byte.
    @inline(__always)
    public func write8(_ address: UInt32, _ value: UInt8) throws(MemoryAccessError) {
        try check(UInt64(address), 1, write: true)
        base.storeBytes(of: value, toByteOffset: Int(address), as: UInt8.self)
    }

    /// Writes a little-endian word.
    @inline(__always)
    public func write16(_ address: UInt32, _ value: UInt16) throws(MemoryAccessError) {
        try check(UInt64(address), 2, write: true)
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: UInt16.self)
    }

    /// Writes a little-endian dword.
    @inline(__always)
    public func write32(_ address: UInt32, _ value: UInt32) throws(MemoryAccessError) {
        try check(UInt64(address), 4, write: true)
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: UInt32.self)
    }

    /// Writes a little-endian qword.
    @inline(__always)
    public func write64(_ address: UInt32, _ value: UInt64) throws(MemoryAccessError) {
        try check(UInt64(address), 8, write: true)
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: UInt64.self)
    }

    /// Copies `count` bytes out of guest memory.
    public func readBytes(_ address: UInt32, count: Int) throws(MemoryAccessError) -> [UInt8] {
        try check(UInt64(address), count, write: false)
        return Array(UnsafeRawBufferPointer(start: base + Int(address), count: count))
    }

    /// Copies `bytes` into guest memory.
    public func writeBytes<C: Collection>(_ address: UInt32, _ bytes: C) throws(MemoryAccessError) where C.Element == UInt8 {
        try check(UInt64(address), bytes.count, write: true)
        var offset = Int(address)
        for b in bytes {
            base.storeBytes(of: b, toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }

    /// Reads a NUL-terminated string of at most `maxLength` bytes (ASCII/Latin-1 as bytes).
    /// Returns nil if no NUL is found within the limit or within guest memory.
    public func readCString(_ address: UInt32, maxLength: Int) -> String? {
        var bytes: [UInt8] = []
        var a = UInt64(address)
        while bytes.count < maxLength, a < UInt64(size) {
            let b = base.load(fromByteOffset: Int(a), as: UInt8.self)
            if b == 0 { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(b)
            a += 1
        }
        return nil
    }

    /// Sets every byte to zero.
    public func zero() {
        memset(base, 0, size)
    }
}
