import VMMHarness

/// One guest-DDB fuzz case: guest memory holding input bytes at an input-chosen address, then
/// `GuestDevice.DDB.read(at:memory:)` at an input-chosen address near them (inside, across the
/// end of memory, or outside it). Any `HarnessError` is a valid outcome; only a trap is a finding.
///
/// Input layout (short inputs read as zero-padded):
///
/// | bytes | meaning |
/// |---|---|
/// | 0–3 | where the bytes go (modulo the memory size) |
/// | 4–5 | signed offset from there to the DDB address |
/// | 6 | bit 0: read at the raw 32-bit address of bytes 0–3 instead (anywhere, mostly outside) |
/// | 7– | bytes written to guest memory (at most `dataLimit`, clipped at the end of memory) |
public enum DDBCase {
    /// Guest memory: small, so the ends are hit often.
    public static let memorySize = 64 << 10
    /// Largest data part used.
    public static let dataLimit = 512
    /// One memory for every case, cleared where the last case wrote.
    nonisolated(unsafe) static var memory: GuestMemory?

    /// Parses one input; returns the DDB or the error text.
    @discardableResult
    public static func run(_ input: [UInt8]) -> String {
        var b = FuzzBytes(input)
        let rawWhere = b.u32()
        let offset = Int16(bitPattern: b.u16())
        let flags = b.u8()
        let data = b.rest(limit: dataLimit)
        let memory: GuestMemory
        if let m = Self.memory {
            memory = m
        } else {
            do { memory = try GuestMemory(size: memorySize) } catch { return "no memory: \(error)" }
            Self.memory = memory
        }
        let at = rawWhere % UInt32(memorySize)
        let count = min(data.count, memorySize - Int(at))
        defer { memory.zero() }
        do { try memory.writeBytes(at, data.prefix(count)) } catch { return "write: \(error)" }
        let ddbAt = flags & 1 != 0 ? rawWhere : UInt32(truncatingIfNeeded: Int64(at) + Int64(offset))
        do {
            let ddb = try GuestDevice.DDB.read(at: ddbAt, memory: memory)
            return "\(ddb.name) \(ddb.deviceID) \(ddb.initOrder) \(ddb.controlProc) \(ddb.version)"
        } catch {
            return error.description
        }
    }
}
