import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// One `KVM_EXIT_IO` as KVM reported it: `count` elements of `size` bytes each at `dataOffset` in
/// the kvm_run mapping. A string instruction (INS/OUTS, usually with REP) can leave several
/// elements in one exit; the decoder checked that all of them lie inside the mapping.
struct KVMPortIO: Equatable, Sendable {
    /// IN (the host fills the elements) or OUT (the guest's data is there).
    var isIn: Bool
    var port: UInt16
    /// Bytes per element: 1, 2 or 4.
    var size: Int
    /// Elements, at least 1.
    var count: Int
    /// Where element 0 starts, from the start of the mapping.
    var dataOffset: Int

    /// The exit the backend hands on for element `index` (0..<count): `.portIn`, or `.portOut`
    /// with the element's value read from `mapping` (little-endian, as x86 stores it).
    func exit(element index: Int, in mapping: UnsafeRawBufferPointer) -> GuestExit {
        if isIn { return .portIn(port: port, size: size) }
        var value: UInt32 = 0
        let at = dataOffset + index * size
        // The decoder checked dataOffset + count * size <= mapping size; this guard keeps the read
        // in bounds even for an index the caller got wrong.
        guard index >= 0, index < count, at >= 0, at + size <= mapping.count else { return .unknown(reason: UInt32(KVM_EXIT_IO)) }
        for i in 0..<size { value |= UInt32(mapping[at + i]) << (8 * UInt32(i)) }
        return .portOut(port: port, size: size, value: value)
    }

    /// Stores `value` as element `index` of an IN (what KVM copies to the guest on the next
    /// KVM_RUN). False when `index` is out of range.
    func store(_ value: UInt32, element index: Int, in mapping: UnsafeMutableRawBufferPointer) -> Bool {
        let at = dataOffset + index * size
        guard isIn, index >= 0, index < count, at >= 0, at + size <= mapping.count else { return false }
        for i in 0..<size { mapping[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
        return true
    }
}

/// Hands out the elements of one port I/O exit in order, one exit per element, as the KVM
/// backend's `run()` does. Pure: it works on any mapping (the vCPU's, or a test's).
///
/// OUT: element 0 comes with the exit, each `next` gives the following one. IN: each element is
/// handed out as `.portIn` and must be answered (`answer`) before the next; one that was not is
/// handed out again. `next` returns nil once every element is done: KVM must run again.
struct PortIOElements: Equatable, Sendable {
    let io: KVMPortIO
    /// Elements handed out so far (the first goes out with the exit).
    private(set) var handedOut = 1
    /// IN: elements answered so far.
    private(set) var answered = 0

    init(_ io: KVMPortIO) { self.io = io }

    /// The exit for element 0.
    func first(in mapping: UnsafeRawBufferPointer) -> GuestExit { io.exit(element: 0, in: mapping) }

    /// The next exit to hand out, or nil when all elements are done.
    mutating func next(in mapping: UnsafeRawBufferPointer) -> GuestExit? {
        if io.isIn && answered < handedOut { return io.exit(element: handedOut - 1, in: mapping) }
        guard handedOut < io.count else { return nil }
        defer { handedOut += 1 }
        return io.exit(element: handedOut, in: mapping)
    }

    /// Stores `value` for the IN element handed out last (again: replaces it). False for an
    /// OUT or when the element does not fit the mapping.
    mutating func answer(_ value: UInt32, in mapping: UnsafeMutableRawBufferPointer) -> Bool {
        guard io.isIn, io.store(value, element: handedOut - 1, in: mapping) else { return false }
        answered = handedOut
        return true
    }
}

/// An exit decoded once from kvm_run: port I/O keeps its element layout (the backend hands the
/// elements out one by one), everything else is already the backend-neutral `GuestExit`.
enum KVMExit: Equatable, Sendable {
    case io(KVMPortIO)
    case exit(GuestExit)
}

/// The vCPU's mapped `struct kvm_run`. The raw union never leaves this type: exits are decoded
/// once by `decodeExit()`.
public final class KVMRunArea: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
    let size: Int
    // Sound: the mapping is at least sizeof(kvm_run) (checked in init), page aligned, and lives
    // until deinit. Only the owner's thread touches it, except `immediate_exit`, which the kicker
    // changes through the atomic helpers in CKVM.
    var run: UnsafeMutablePointer<kvm_run> { raw.assumingMemoryBound(to: kvm_run.self) }
    /// The whole mapping, for element reads and writes of port I/O.
    var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: raw, count: size) }

    /// Takes ownership of a mapping of `size` bytes at `pointer` (unmapped in deinit).
    init(pointer: UnsafeMutableRawPointer, size: Int) throws(HarnessError) {
        guard size >= MemoryLayout<kvm_run>.size else {
            ckvm_munmap(pointer, size)
            throw .guestProtocol("the vCPU mapping (\(size) bytes) is smaller than struct kvm_run (\(MemoryLayout<kvm_run>.size))")
        }
        self.raw = pointer
        self.size = size
    }

    deinit { ckvm_munmap(raw, size) }

    /// The general registers KVM syncs into kvm_run (`s.regs.regs`).
    // Sound: the offset is offsetof() from kvm.h, inside the mapping, suitably aligned (the
    // mapping is page aligned and kvm_run's layout aligns its members).
    var syncedRegs: UnsafeMutablePointer<kvm_regs> {
        (raw + Int(ckvm_KVM_RUN_SYNC_REGS_OFFSET)).assumingMemoryBound(to: kvm_regs.self)
    }

    /// The segment and system registers KVM syncs into kvm_run (`s.regs.sregs`).
    var syncedSregs: UnsafeMutablePointer<kvm_sregs> {
        (raw + Int(ckvm_KVM_RUN_SYNC_SREGS_OFFSET)).assumingMemoryBound(to: kvm_sregs.self)
    }

    /// Decodes the exit KVM_RUN just reported. I/O data stays in the mapping (bounds-checked).
    func decodeExit() -> KVMExit {
        KVMRunArea.decodeExit(run: UnsafeRawPointer(raw), mappingSize: size)
    }

    /// The first exit the backend hands on for the kvm_run at `run` (element 0 of port I/O);
    /// used by tests on synthetic `kvm_run` contents.
    static func decode(run: UnsafePointer<kvm_run>, mappingSize: Int) -> GuestExit {
        switch decodeExit(run: UnsafeRawPointer(run), mappingSize: mappingSize) {
        case let .exit(e):
            return e
        case let .io(io):
            return io.exit(element: 0, in: UnsafeRawBufferPointer(start: UnsafeRawPointer(run), count: mappingSize))
        }
    }

    /// The pure decoder: reads only the fields of the exit KVM reports, each through the
    /// union's offset, so nothing else of kvm_run (`immediate_exit` included) is read.
    ///
    /// `run` must point at `mappingSize` readable bytes, at least sizeof(kvm_run), 8-byte aligned.
    static func decodeExit(run: UnsafeRawPointer, mappingSize: Int) -> KVMExit {
        let exitReason = run.load(fromByteOffset: MemoryLayout<kvm_run>.offset(of: \kvm_run.exit_reason) ?? 8, as: UInt32.self)
        /// The exit-data union member `member` names (its type only: every member starts at the
        /// union's offset).
        func member<T>(_ member: KeyPath<kvm_run, T>) -> T {
            run.load(fromByteOffset: Int(ckvm_KVM_RUN_EXIT_DATA_OFFSET), as: T.self)
        }
        switch Int32(bitPattern: exitReason) {
        case KVM_EXIT_IO:
            let io = member(\.io)
            let size = Int(io.size)
            let count = Int(io.count)
            guard size == 1 || size == 2 || size == 4, count >= 1,
                  io.direction == ckvm_KVM_EXIT_IO_IN || io.direction == ckvm_KVM_EXIT_IO_OUT,
                  io.data_offset <= UInt64(mappingSize), let offset = Int(exactly: io.data_offset),
                  count <= (mappingSize - offset) / size else {
                return .exit(.unknown(reason: exitReason))
            }
            return .io(KVMPortIO(isIn: io.direction == ckvm_KVM_EXIT_IO_IN, port: io.port, size: size, count: count,
                                 dataOffset: offset))
        case KVM_EXIT_MMIO:
            let m = member(\.mmio)
            let len = Int(min(m.len, 8))
            var d: UInt64 = 0
            withUnsafeBytes(of: m.data) { b in
                for i in 0..<len { d |= UInt64(b[i]) << (8 * i) }
            }
            return .exit(.mmio(address: m.phys_addr, isWrite: m.is_write != 0, length: len, data: d))
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            return .exit(.interruptWindowOpen)
        case KVM_EXIT_HLT:
            return .exit(.halt)
        case KVM_EXIT_SHUTDOWN:
            return .exit(.shutdown(reason: "KVM_EXIT_SHUTDOWN (triple fault)"))
        case KVM_EXIT_FAIL_ENTRY:
            return .exit(.failEntry(reason: member(\.fail_entry).hardware_entry_failure_reason))
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = member(\.internal)
            let n = Int(min(ie.ndata, 16))
            // Each array is made at its final size (this exit is on every assisted INT n's path).
            let data: [UInt64] = withUnsafeBytes(of: ie.data) { b in
                (0..<n).map { b.load(fromByteOffset: $0 * 8, as: UInt64.self) }
            }
            var bytes: [UInt8] = []
            // Emulation failures with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES carry
            // the instruction (struct emulation_failure): data[0] = flags, then insn_size (one
            // byte) and up to 15 instruction bytes, in data[1] and data[2] (little-endian).
            if ie.suberror == ckvm_KVM_INTERNAL_ERROR_EMULATION, data.count >= 3,
               data[0] & UInt64(ckvm_KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 {
                let count = Int(min(UInt8(truncatingIfNeeded: data[1]), 15))
                bytes = (0..<count).map { i in
                    let at = i + 1   // byte index within data[1...2]
                    return UInt8(truncatingIfNeeded: data[1 + at / 8] >> (8 * UInt64(at % 8)))
                }
            }
            return .exit(.internalError(suberror: ie.suberror, data: data, instructionBytes: bytes))
        case KVM_EXIT_INTR:
            return .exit(.interrupted)
        case KVM_EXIT_DEBUG:
            let arch = member(\.debug).arch
            let pc = UInt32(truncatingIfNeeded: arch.pc)
            // DR6.BS (bit 14): the stop is a single step (KVM_GUESTDBG_SINGLESTEP), not a DRn hit.
            return .exit(arch.dr6 & (1 << 14) != 0 ? .singleStep(address: pc) : .breakpoint(address: pc))
        default:
            return .exit(.unknown(reason: exitReason))
        }
    }
}

extension KVMRunArea {
    /// Decodes `bytes` as the contents of a vCPU's kvm_run mapping after `KVM_RUN`, exactly as
    /// the KVM backend does, and returns the exits the backend would hand its caller for it: one
    /// per element of port I/O (string I/O has several), everything else as a single exit. The
    /// elements of an IN are answered with `inValue`, through the same bounds-checked store as
    /// `completePortIn`.
    ///
    /// `bytes` shorter than `struct kvm_run` are zero-extended; longer ones model a bigger mapping
    /// (the real one is several pages, with I/O data after the first). No input traps: this is
    /// the entry point of the exit-decoder fuzz target (`Fuzz/`).
    public static func exits(decodingKVMRun bytes: UnsafeRawBufferPointer, inValue: UInt32 = 0xFFFF_FFFF) -> [GuestExit] {
        let size = max(bytes.count, MemoryLayout<kvm_run>.size)
        // Page aligned like the real mapping, so every field load is aligned.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        if let base = bytes.baseAddress, !bytes.isEmpty {
            buffer.baseAddress?.copyMemory(from: base, byteCount: bytes.count)
        }
        guard let start = buffer.baseAddress else { return [] }
        switch decodeExit(run: UnsafeRawPointer(start), mappingSize: size) {
        case let .exit(e):
            return [e]
        case let .io(io):
            // The backend's own hand-out, every IN element answered with `inValue`.
            let mapping = UnsafeRawBufferPointer(buffer)
            var elements = PortIOElements(io)
            var out = [elements.first(in: mapping)]
            out.reserveCapacity(io.count)
            while true {
                if io.isIn, !elements.answer(inValue, in: buffer) {
                    // Cannot happen for a decoded exit; stop rather than hand the element out forever.
                    out.append(.unknown(reason: UInt32(KVM_EXIT_IO)))
                    break
                }
                guard let e = elements.next(in: mapping) else { break }
                out.append(e)
            }
            return out
        }
    }
}
