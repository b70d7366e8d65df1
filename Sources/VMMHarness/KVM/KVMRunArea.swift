import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// The vCPU's mapped `struct kvm_run`. The raw union never leaves this type: exits are decoded
/// once by `decodeExit()` into `GuestExit`.
public final class KVMRunArea: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
    let size: Int
    // Sound: the mapping is at least sizeof(kvm_run) (KVM_GET_VCPU_MMAP_SIZE >= 1 page, checked
    // in init), page aligned, and lives until deinit.
    var run: UnsafeMutablePointer<kvm_run> { raw.assumingMemoryBound(to: kvm_run.self) }

    init(pointer: UnsafeMutableRawPointer, size: Int) {
        precondition(size >= MemoryLayout<kvm_run>.size, "kvm_run mapping smaller than struct kvm_run")
        self.raw = pointer
        self.size = size
    }

    deinit { ckvm_munmap(raw, size) }

    /// Decodes the exit KVM_RUN just reported. I/O data is read from the mapping at
    /// `data_offset`, bounds-checked against the mapping.
    func decodeExit() -> GuestExit {
        KVMRunArea.decode(run: UnsafePointer(run), mappingSize: size)
    }

    /// The pure decoder, also used by tests on synthetic `kvm_run` contents.
    static func decode(run: UnsafePointer<kvm_run>, mappingSize: Int) -> GuestExit {
        let r = run.pointee
        switch Int32(r.exit_reason) {
        case KVM_EXIT_IO:
            let io = r.io
            let size = Int(io.size)
            let offset = Int(io.data_offset)
            guard size == 1 || size == 2 || size == 4, offset >= 0, offset + size <= mappingSize else {
                return .unknown(reason: r.exit_reason)
            }
            if io.direction == ckvm_KVM_EXIT_IO_IN { return .portIn(port: io.port, size: size) }
            let base = UnsafeRawPointer(run) + offset
            var v: UInt32 = 0
            for i in 0..<size { v |= UInt32(base.load(fromByteOffset: i, as: UInt8.self)) << (8 * i) }
            return .portOut(port: io.port, size: size, value: v)
        case KVM_EXIT_MMIO:
            let m = r.mmio
            let len = Int(min(m.len, 8))
            var d: UInt64 = 0
            withUnsafeBytes(of: m.data) { b in
                for i in 0..<len { d |= UInt64(b[i]) << (8 * i) }
            }
            return .mmio(address: m.phys_addr, isWrite: m.is_write != 0, length: len, data: d)
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown(reason: "KVM_EXIT_SHUTDOWN (triple fault)")
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: r.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = r.internal
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
            return .internalError(suberror: ie.suberror, data: data, instructionBytes: bytes)
        case KVM_EXIT_INTR:
            return .interrupted
        case KVM_EXIT_DEBUG:
            return .breakpoint(address: UInt32(truncatingIfNeeded: r.debug.arch.pc))
        default:
            return .unknown(reason: r.exit_reason)
        }
    }
}
