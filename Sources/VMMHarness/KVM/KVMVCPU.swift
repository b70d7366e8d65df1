import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A vCPU file descriptor with its `kvm_run` mapping (rust-vmm's `VcpuFd`).
///
/// Registers move through the sync-regs area of `kvm_run` when the host offers
/// `KVM_CAP_SYNC_REGS` with regs and sregs (no extra ioctl per exit), otherwise through
/// KVM_GET/SET_REGS and KVM_GET/SET_SREGS.
public final class KVMVCPU: @unchecked Sendable {
    public let vm: KVMVirtualMachine
    let fd: Int32
    let runArea: KVMRunArea
    /// Whether registers travel through kvm_run's sync area.
    public let usesSyncRegisters: Bool
    private var threadToKick: pthread_t?
    private var syncedValid = false

    init(vm: KVMVirtualMachine, fd: Int32, run: KVMRunArea, syncSets: UInt32) {
        self.vm = vm
        self.fd = fd
        self.runArea = run
        let want = UInt32(truncatingIfNeeded: ckvm_KVM_SYNC_X86_REGS | ckvm_KVM_SYNC_X86_SREGS)
        self.usesSyncRegisters = syncSets & want == want && getenv("VMM_HARNESS_NO_SYNC_REGS") == nil
        KVMVCPU.installKickHandler()
    }

    deinit { ckvm_close(fd) }

    /// `KVM_RUN` once. EINTR (a kick or any signal) is returned as `.interrupted`, never retried here.
    public func run() throws(HarnessError) -> GuestExit {
        if let t = threadToKick, pthread_equal(t, pthread_self()) != 0 {} else { bindToCurrentThread() }
        let r = runArea.run
        if usesSyncRegisters {
            r.pointee.kvm_valid_regs = ckvm_KVM_SYNC_X86_REGS | ckvm_KVM_SYNC_X86_SREGS
        }
        let rc = ckvm_ioctl_none(fd, ckvm_KVM_RUN)
        syncedValid = usesSyncRegisters
        r.pointee.kvm_dirty_regs = 0
        if rc < 0 {
            let e = ckvm_errno()
            if e == EINTR || e == EAGAIN {
                r.pointee.immediate_exit = 0
                return .interrupted
            }
            syncedValid = false
            throw .system(call: "ioctl(KVM_RUN)", errno: e)
        }
        return runArea.decodeExit()
    }

    /// For the pending IN: stores the value KVM hands the guest on the next KVM_RUN.
    public func completePortIn(value: UInt32) throws(HarnessError) {
        let r = runArea.run
        guard r.pointee.exit_reason == UInt32(KVM_EXIT_IO), r.pointee.io.direction == ckvm_KVM_EXIT_IO_IN else {
            throw .guestProtocol("completePortIn without a pending IN")
        }
        let size = Int(r.pointee.io.size)
        let offset = Int(r.pointee.io.data_offset)
        guard offset >= 0, offset + size <= runArea.size else { throw .guestProtocol("kvm_run I/O data offset out of range") }
        for i in 0..<size {
            runArea.raw.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))), toByteOffset: offset + i, as: UInt8.self)
        }
    }

    // MARK: registers

    /// General registers (KVM's `struct kvm_regs`).
    /// Calls `body` with the registers KVM synced into `kvm_run` at the last exit, read in
    /// place (no copy of the structures); nil when they are not synced (use `getRegs`/`getSregs`).
    func withSyncedRegisters<T>(_ body: (UnsafePointer<kvm_regs>, UnsafePointer<kvm_sregs>) -> T) -> T? {
        guard syncedValid, let regsAt = MemoryLayout<kvm_sync_regs>.offset(of: \.regs),
              let sregsAt = MemoryLayout<kvm_sync_regs>.offset(of: \.sregs) else { return nil }
        return withUnsafeMutablePointer(to: &runArea.run.pointee.s.regs) { sync in
            let raw = UnsafeRawPointer(sync)
            return body(raw.advanced(by: regsAt).assumingMemoryBound(to: kvm_regs.self),
                        raw.advanced(by: sregsAt).assumingMemoryBound(to: kvm_sregs.self))
        }
    }

    public func getRegs() throws(HarnessError) -> kvm_regs {
        if syncedValid { return runArea.run.pointee.s.regs.regs }
        var regs = kvm_regs()
        _ = try kvmCheck("ioctl(KVM_GET_REGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_GET_REGS, &regs))
        return regs
    }

    public func setRegs(_ regs: kvm_regs) throws(HarnessError) {
        if syncedValid {
            runArea.run.pointee.s.regs.regs = regs
            runArea.run.pointee.kvm_dirty_regs |= ckvm_KVM_SYNC_X86_REGS
            return
        }
        var r = regs
        _ = try kvmCheck("ioctl(KVM_SET_REGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_REGS, &r))
    }

    /// Segment and system registers (KVM's `struct kvm_sregs`).
    public func getSregs() throws(HarnessError) -> kvm_sregs {
        if syncedValid { return runArea.run.pointee.s.regs.sregs }
        var s = kvm_sregs()
        _ = try kvmCheck("ioctl(KVM_GET_SREGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_GET_SREGS, &s))
        return s
    }

    public func setSregs(_ sregs: kvm_sregs) throws(HarnessError) {
        if syncedValid {
            runArea.run.pointee.s.regs.sregs = sregs
            runArea.run.pointee.kvm_dirty_regs |= ckvm_KVM_SYNC_X86_SREGS
            return
        }
        var s = sregs
        _ = try kvmCheck("ioctl(KVM_SET_SREGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_SREGS, &s))
    }

    /// `KVM_NMI`: queues a non-maskable interrupt.
    public func injectNMI() throws(HarnessError) {
        _ = try kvmCheck("ioctl(KVM_NMI)", ckvm_ioctl_none(fd, ckvm_KVM_NMI))
    }

    /// `KVM_SET_GUEST_DEBUG` with hardware execution breakpoints in DR0–DR3 (at most 4; an empty
    /// list turns guest debugging off). A hit exits with KVM_EXIT_DEBUG before the instruction runs.
    public func setHardwareBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        guard addresses.count <= 4 else { throw .invalidArgument("at most 4 hardware breakpoints") }
        var d = kvm_guest_debug()
        if !addresses.isEmpty {
            d.control = ckvm_KVM_GUESTDBG_ENABLE | ckvm_KVM_GUESTDBG_USE_HW_BP
            var dr7: UInt64 = 0
            withUnsafeMutableBytes(of: &d.arch.debugreg) { b in
                for (i, a) in addresses.enumerated() {
                    b.storeBytes(of: UInt64(a), toByteOffset: i * 8, as: UInt64.self)
                    dr7 |= 1 << (2 * UInt64(i))   // Ln: local enable; R/W = 00 (execute), LEN = 00
                }
                b.storeBytes(of: dr7, toByteOffset: 7 * 8, as: UInt64.self)
            }
        }
        _ = try kvmCheck("ioctl(KVM_SET_GUEST_DEBUG)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_GUEST_DEBUG, &d))
    }

    // MARK: kicking out of KVM_RUN (timeouts)

    /// Remembers the calling thread as the one that runs this vCPU, so `kick()` can interrupt it,
    /// and makes sure that thread does not block the kick signal (thread pools often block
    /// signals; a blocked SIGUSR2 would leave a spinning guest inside KVM_RUN forever).
    public func bindToCurrentThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGUSR2)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        threadToKick = pthread_self()
    }

    /// Makes a running or about-to-run KVM_RUN return: sets `immediate_exit` and signals the vCPU
    /// thread with SIGUSR2 (whose handler does nothing, so the ioctl returns EINTR).
    /// Safe to call from another thread.
    public func kick() {
        // A byte store into the shared mapping; KVM reads it on entry (KVM_CAP_IMMEDIATE_EXIT).
        runArea.raw.storeBytes(of: 1, toByteOffset: MemoryLayout<kvm_run>.offset(of: \kvm_run.immediate_exit)!, as: UInt8.self)
        if let t = threadToKick { pthread_kill(t, SIGUSR2) }
    }

    private static let handlerInstalled: Bool = {
        var sa = sigaction()
        sa.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&sa.sa_mask)
        sa.sa_flags = 0 // no SA_RESTART: KVM_RUN must return EINTR
        return sigaction(SIGUSR2, &sa, nil) == 0
    }()

    static func installKickHandler() { _ = handlerInstalled }
}
