import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A vCPU file descriptor with its `kvm_run` mapping (rust-vmm's `VcpuFd`).
///
/// Registers move through the sync-regs area of `kvm_run` when asked to and the host offers
/// `KVM_CAP_SYNC_REGS` with regs and sregs (no extra ioctl per exit), otherwise through
/// KVM_GET/SET_REGS and KVM_GET/SET_SREGS.
///
/// Signals: the kick signal's handler is installed while the vCPU exists (`KickSignalHandler`).
/// The caller's thread mask is never changed; `KVM_SET_SIGNAL_MASK` gives `KVM_RUN` the running
/// thread's mask without the kick signal, so a kick interrupts `KVM_RUN` whatever that thread
/// blocks. A kick signal that arrives while it is blocked outside `KVM_RUN` stays pending and
/// ends the next `KVM_RUN` with EINTR; it is then taken off the pending set.
public final class KVMVCPU: @unchecked Sendable {
    public let vm: KVMVirtualMachine
    let fd: Int32
    let runArea: KVMRunArea
    /// Whether registers travel through kvm_run's sync area.
    public let usesSyncRegisters: Bool
    /// Interrupts `KVM_RUN` from other threads.
    public let kicker: KVMKicker
    /// The kick signal (`BackendOptions.kickSignal`).
    public var kickSignal: Int32 { kicker.signal }
    /// Whether the sync area holds the registers of the last exit.
    @exclusivity(unchecked) private var syncedValid = false
    /// Whether KVM_RUN asks for an exit when the guest can take an interrupt
    /// (`request_interrupt_window`; the exit is KVM_EXIT_IRQ_WINDOW_OPEN).
    @exclusivity(unchecked) var interruptWindowWanted = false
    /// `kicker.kickCount` when `run()` last returned `.interrupted`: kicks up to there are reported.
    @exclusivity(unchecked) private var kicksReported: UInt64 = 0
    /// The hardware breakpoints (DR0–DR3) and single-stepping, set together by KVM_SET_GUEST_DEBUG.
    @exclusivity(unchecked) public private(set) var breakpoints: [UInt32] = []
    @exclusivity(unchecked) public private(set) var singleStepping = false

    init(vm: KVMVirtualMachine, fd: Int32, run: KVMRunArea, syncSets: UInt32, kickSignal: Int32) {
        self.vm = vm
        self.fd = fd
        self.runArea = run
        let want = UInt32(truncatingIfNeeded: ckvm_KVM_SYNC_X86_REGS | ckvm_KVM_SYNC_X86_SREGS)
        self.usesSyncRegisters = syncSets & want == want
        self.kicker = KVMKicker(runArea: run, signal: kickSignal)
    }

    deinit {
        // In this order: no kick signals once detached, then the handler may go. A kick signal
        // still pending on this thread (it blocks the signal; typically the vCPU thread) is
        // taken first: after the previous handler is back it could end the process.
        kicker.detach()
        KVMVCPU.takePendingKickSignal(kicker.signal)
        KickSignalHandler.release(kicker.signal)
        ckvm_close(fd)
    }

    /// `KVM_RUN` once. EINTR (a kick or any signal) is returned as `.interrupted`, never retried here.
    func run() throws(HarnessError) -> KVMExit {
        let exit = try enterKVM()
        if case .exit(.interrupted) = exit {
            kicksReported = kicker.kickCount
            endKick()
        }
        return exit
    }

    /// Lets KVM finish the instruction of the last exit without running the guest: for an IN,
    /// KVM copies the answered data into the guest (register or memory) and moves EIP on only
    /// when it is entered again. KVM_RUN with `immediate_exit` set does that and returns EINTR
    /// before any guest instruction (the way KVM's API documentation gives for completing
    /// pending I/O). A kick that arrives meanwhile is kept for the next `run()`. Returns the
    /// exit KVM reported instead of EINTR, if any.
    func completePendingOperation() throws(HarnessError) -> KVMExit? {
        // Sound: atomic stores into the mapping the kicker writes too.
        ckvm_kick_store(runArea.run)
        let exit: KVMExit
        do { exit = try enterKVM() } catch {
            endKick()
            throw error
        }
        endKick()
        if case .exit(.interrupted) = exit { return nil }
        return exit
    }

    /// One KVM_RUN ioctl, with the sync registers asked for; EINTR/EAGAIN read as `.interrupted`.
    private func enterKVM() throws(HarnessError) -> KVMExit {
        let thread = CurrentThread.id
        if thread != kicker.recordedThread { try bind(to: thread) }
        let r = runArea.run
        if usesSyncRegisters {
            r.pointee.kvm_valid_regs = ckvm_KVM_SYNC_X86_REGS | ckvm_KVM_SYNC_X86_SREGS
        }
        // Sound: a plain field of the mapping only this thread writes.
        r.pointee.request_interrupt_window = interruptWindowWanted ? 1 : 0
        let rc = ckvm_ioctl_none(fd, ckvm_KVM_RUN)
        let e = Errno(rawValue: ckvm_errno())
        // KVM consumed the dirty sync registers and stored the current ones, on every path that
        // reached the vCPU (EINTR from immediate_exit included).
        syncedValid = usesSyncRegisters
        r.pointee.kvm_dirty_regs = 0
        if rc < 0 {
            if e == .interrupted || e == .resourceTemporarilyUnavailable { return .exit(.interrupted) }
            syncedValid = false
            throw .system(call: "ioctl(KVM_RUN)", errno: e)
        }
        return runArea.decodeExit()
    }

    /// KVM_RUN returned EINTR: clears `immediate_exit` (firecracker does the same), sets it again
    /// if a kick has not been reported by `run()` yet (it arrived after, or while KVM finished
    /// an IN), and takes a kick signal that the running thread blocks off its pending set, where
    /// it would otherwise end every following KVM_RUN at once.
    private func endKick() {
        // Sound: atomic stores into the mapping the kicker writes too. Cleared first, then
        // checked: a kick counts itself before it stores, so none falls between the two.
        ckvm_kick_clear(runArea.run)
        if kicker.kickCount != kicksReported { ckvm_kick_store(runArea.run) }
        KVMVCPU.takePendingKickSignal(kickSignal)
    }

    /// Takes `signal` off the calling thread's pending set (it is pending only while blocked).
    private static func takePendingKickSignal(_ signal: Int32) {
        var pending = sigset_t()
        sigemptyset(&pending)
        // sigpending only fails for a bad pointer.
        guard sigpending(&pending) == 0, sigismember(&pending, signal) == 1 else { return }
        var only = sigset_t()
        sigemptyset(&only)
        sigaddset(&only, signal)
        var now = timespec(tv_sec: 0, tv_nsec: 0)
        // Real-time kick signals queue: take them all. Returns -1/EAGAIN when none is left.
        while sigtimedwait(&only, nil, &now) == signal {}
    }

    /// Records the calling thread (kernel id `thread`) as the one that runs the vCPU and gives
    /// KVM_RUN its signal mask without the kick signal (`KVM_SET_SIGNAL_MASK`).
    private func bind(to thread: Int32) throws(HarnessError) {
        var mask = sigset_t()
        sigemptyset(&mask)
        // A query: with no new set, pthread_sigmask changes nothing.
        let rc = pthread_sigmask(SIG_BLOCK, nil, &mask)
        guard rc == 0 else { throw .system(call: "pthread_sigmask(query)", errno: Errno(rawValue: rc)) }
        sigdelset(&mask, kickSignal)
        _ = try kvmCheck("ioctl(KVM_SET_SIGNAL_MASK)", ckvm_set_signal_mask(fd, &mask))
        kicker.record(thread: thread)
    }

    // MARK: registers

    /// Calls `body` with the registers KVM synced into `kvm_run` at the last exit, read in
    /// place (no copy of the structures); nil when they are not synced (use `getRegs`/`getSregs`).
    func withSyncedRegisters<T>(_ body: (UnsafePointer<kvm_regs>, UnsafePointer<kvm_sregs>) -> T) -> T? {
        guard syncedValid else { return nil }
        return body(UnsafePointer(runArea.syncedRegs), UnsafePointer(runArea.syncedSregs))
    }

    /// General registers (KVM's `struct kvm_regs`).
    public func getRegs() throws(HarnessError) -> kvm_regs {
        if syncedValid { return runArea.syncedRegs.pointee }
        return try getRegsThroughIoctl()
    }

    /// `KVM_GET_REGS`, even when the sync area is in use (tests compare the two).
    func getRegsThroughIoctl() throws(HarnessError) -> kvm_regs {
        var regs = kvm_regs()
        _ = try kvmCheck("ioctl(KVM_GET_REGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_GET_REGS, &regs))
        return regs
    }

    public func setRegs(_ regs: kvm_regs) throws(HarnessError) {
        if syncedValid {
            runArea.syncedRegs.pointee = regs
            runArea.run.pointee.kvm_dirty_regs |= ckvm_KVM_SYNC_X86_REGS
            return
        }
        var r = regs
        _ = try kvmCheck("ioctl(KVM_SET_REGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_REGS, &r))
    }

    /// Segment and system registers (KVM's `struct kvm_sregs`).
    public func getSregs() throws(HarnessError) -> kvm_sregs {
        if syncedValid { return runArea.syncedSregs.pointee }
        return try getSregsThroughIoctl()
    }

    /// `KVM_GET_SREGS`, even when the sync area is in use (tests compare the two).
    func getSregsThroughIoctl() throws(HarnessError) -> kvm_sregs {
        var s = kvm_sregs()
        _ = try kvmCheck("ioctl(KVM_GET_SREGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_GET_SREGS, &s))
        return s
    }

    public func setSregs(_ sregs: kvm_sregs) throws(HarnessError) {
        if syncedValid {
            runArea.syncedSregs.pointee = sregs
            runArea.run.pointee.kvm_dirty_regs |= ckvm_KVM_SYNC_X86_SREGS
            return
        }
        var s = sregs
        _ = try kvmCheck("ioctl(KVM_SET_SREGS)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_SREGS, &s))
    }

    /// `KVM_GET_VCPU_EVENTS`: pending and injected exceptions, interrupts and NMIs, and the
    /// STI / MOV SS interrupt shadow.
    public func getEvents() throws(HarnessError) -> kvm_vcpu_events {
        var events = kvm_vcpu_events()
        _ = try kvmCheck("ioctl(KVM_GET_VCPU_EVENTS)", ckvm_ioctl_ptr(fd, ckvm_KVM_GET_VCPU_EVENTS, &events))
        return events
    }

    /// `KVM_SET_VCPU_EVENTS`; `events.flags` says which of the optional parts to take.
    public func setEvents(_ events: kvm_vcpu_events) throws(HarnessError) {
        var e = events
        _ = try kvmCheck("ioctl(KVM_SET_VCPU_EVENTS)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_VCPU_EVENTS, &e))
    }

    /// `KVM_NMI`: queues a non-maskable interrupt.
    public func injectNMI() throws(HarnessError) {
        _ = try kvmCheck("ioctl(KVM_NMI)", ckvm_ioctl_none(fd, ckvm_KVM_NMI))
    }

    // MARK: guest debugging

    /// Hardware execution breakpoints in DR0–DR3 (at most 4; an empty list clears them). A hit
    /// exits with KVM_EXIT_DEBUG before the instruction runs (`.breakpoint`).
    public func setHardwareBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        guard addresses.count <= 4 else { throw .invalidArgument("at most 4 hardware breakpoints") }
        try setGuestDebug(breakpoints: addresses, singleStep: singleStepping)
    }

    /// Single-stepping (KVM_GUESTDBG_SINGLESTEP): with it on, every KVM_RUN runs one instruction
    /// and exits with KVM_EXIT_DEBUG, DR6.BS set (`.singleStep`).
    public func setSingleStep(_ enabled: Bool) throws(HarnessError) {
        try setGuestDebug(breakpoints: breakpoints, singleStep: enabled)
    }

    /// One `KVM_SET_GUEST_DEBUG` for both; the recorded state changes only when KVM took it.
    /// Single-stepping for the backend's own use (finding an interrupt window where KVM does not
    /// report one), apart from what `setSingleStep` asked for.
    @exclusivity(unchecked) private(set) var windowStepping = false

    /// Turns the backend's own single-stepping on or off (one KVM_SET_GUEST_DEBUG).
    func setWindowStepping(_ enabled: Bool) throws(HarnessError) {
        let before = windowStepping
        windowStepping = enabled
        do { try setGuestDebug(breakpoints: breakpoints, singleStep: singleStepping) } catch {
            windowStepping = before
            throw error
        }
    }

    private func setGuestDebug(breakpoints addresses: [UInt32], singleStep: Bool) throws(HarnessError) {
        var d = kvm_guest_debug()
        let stepping = singleStep || windowStepping
        if !addresses.isEmpty || stepping { d.control = ckvm_KVM_GUESTDBG_ENABLE }
        if stepping { d.control |= ckvm_KVM_GUESTDBG_SINGLESTEP }
        if !addresses.isEmpty {
            d.control |= ckvm_KVM_GUESTDBG_USE_HW_BP
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
        // Copied into storage kept between calls (not shared with the caller's array): a guest
        // fault handler's breakpoint changes once per handler, and sharing made the caller's
        // next in-place change copy the array, one allocation per guest handler.
        if breakpoints != addresses {
            breakpoints.removeAll(keepingCapacity: true)
            breakpoints.append(contentsOf: addresses)
        }
        singleStepping = singleStep
    }

    // MARK: port I/O data

    /// The kvm_run mapping's bytes, for the elements of the last I/O exit.
    var ioData: UnsafeMutableRawBufferPointer { runArea.bytes }
}
