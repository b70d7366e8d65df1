import CKVM
#if canImport(Glibc)
import Glibc
#endif

extension SegmentRegister {
    init(_ s: kvm_segment) {
        self.init(selector: s.selector, base: UInt32(truncatingIfNeeded: s.base), limit: s.limit, type: s.type,
                  isCodeOrData: s.s != 0, dpl: s.dpl, present: s.present != 0, defaultBig: s.db != 0,
                  granularity: s.g != 0, available: s.avl != 0, unusable: s.unusable != 0)
    }

    var kvm: kvm_segment {
        var s = kvm_segment()
        s.base = UInt64(base); s.limit = limit; s.selector = selector; s.type = type
        s.present = present ? 1 : 0; s.dpl = dpl; s.db = defaultBig ? 1 : 0; s.s = isCodeOrData ? 1 : 0
        s.l = 0; s.g = granularity ? 1 : 0; s.avl = available ? 1 : 0; s.unusable = unusable ? 1 : 0
        return s
    }
}

extension CPUState {
    /// Whether `a` and `b` agree on everything but the general registers, EIP and EFLAGS.
    static func sameSystemState(_ a: CPUState, _ b: CPUState) -> Bool {
        a.cs == b.cs && a.ss == b.ss && a.ds == b.ds && a.es == b.es && a.fs == b.fs && a.gs == b.gs &&
            a.tr == b.tr && a.ldtr == b.ldtr && a.gdtr == b.gdtr && a.idtr == b.idtr &&
            a.cr0 == b.cr0 && a.cr2 == b.cr2 && a.cr3 == b.cr3 && a.cr4 == b.cr4
    }

    init(regs r: kvm_regs, sregs s: kvm_sregs) {
        self.init()
        apply(regs: r)
        apply(sregs: s)
    }

    init(regs r: UnsafePointer<kvm_regs>, sregs s: UnsafePointer<kvm_sregs>) {
        self.init()
        eax = UInt32(truncatingIfNeeded: r.pointee.rax); ecx = UInt32(truncatingIfNeeded: r.pointee.rcx)
        edx = UInt32(truncatingIfNeeded: r.pointee.rdx); ebx = UInt32(truncatingIfNeeded: r.pointee.rbx)
        esp = UInt32(truncatingIfNeeded: r.pointee.rsp); ebp = UInt32(truncatingIfNeeded: r.pointee.rbp)
        esi = UInt32(truncatingIfNeeded: r.pointee.rsi); edi = UInt32(truncatingIfNeeded: r.pointee.rdi)
        eip = UInt32(truncatingIfNeeded: r.pointee.rip); eflags = UInt32(truncatingIfNeeded: r.pointee.rflags)
        cs = SegmentRegister(s.pointee.cs); ds = SegmentRegister(s.pointee.ds); es = SegmentRegister(s.pointee.es)
        fs = SegmentRegister(s.pointee.fs); gs = SegmentRegister(s.pointee.gs); ss = SegmentRegister(s.pointee.ss)
        tr = SegmentRegister(s.pointee.tr); ldtr = SegmentRegister(s.pointee.ldt)
        gdtr = TableRegister(base: UInt32(truncatingIfNeeded: s.pointee.gdt.base), limit: s.pointee.gdt.limit)
        idtr = TableRegister(base: UInt32(truncatingIfNeeded: s.pointee.idt.base), limit: s.pointee.idt.limit)
        cr0 = UInt32(truncatingIfNeeded: s.pointee.cr0); cr2 = UInt32(truncatingIfNeeded: s.pointee.cr2)
        cr3 = UInt32(truncatingIfNeeded: s.pointee.cr3); cr4 = UInt32(truncatingIfNeeded: s.pointee.cr4)
    }

    mutating func apply(regs r: kvm_regs) {
        eax = UInt32(truncatingIfNeeded: r.rax); ecx = UInt32(truncatingIfNeeded: r.rcx)
        edx = UInt32(truncatingIfNeeded: r.rdx); ebx = UInt32(truncatingIfNeeded: r.rbx)
        esp = UInt32(truncatingIfNeeded: r.rsp); ebp = UInt32(truncatingIfNeeded: r.rbp)
        esi = UInt32(truncatingIfNeeded: r.rsi); edi = UInt32(truncatingIfNeeded: r.rdi)
        eip = UInt32(truncatingIfNeeded: r.rip); eflags = UInt32(truncatingIfNeeded: r.rflags)
    }

    mutating func apply(sregs s: kvm_sregs) {
        cs = SegmentRegister(s.cs); ds = SegmentRegister(s.ds); es = SegmentRegister(s.es)
        fs = SegmentRegister(s.fs); gs = SegmentRegister(s.gs); ss = SegmentRegister(s.ss)
        tr = SegmentRegister(s.tr); ldtr = SegmentRegister(s.ldt)
        gdtr = TableRegister(base: UInt32(truncatingIfNeeded: s.gdt.base), limit: s.gdt.limit)
        idtr = TableRegister(base: UInt32(truncatingIfNeeded: s.idt.base), limit: s.idt.limit)
        cr0 = UInt32(truncatingIfNeeded: s.cr0); cr2 = UInt32(truncatingIfNeeded: s.cr2)
        cr3 = UInt32(truncatingIfNeeded: s.cr3); cr4 = UInt32(truncatingIfNeeded: s.cr4)
    }

    var kvmRegs: kvm_regs {
        var r = kvm_regs()
        r.rax = UInt64(eax); r.rcx = UInt64(ecx); r.rdx = UInt64(edx); r.rbx = UInt64(ebx)
        r.rsp = UInt64(esp); r.rbp = UInt64(ebp); r.rsi = UInt64(esi); r.rdi = UInt64(edi)
        r.rip = UInt64(eip); r.rflags = UInt64(eflags | EFlags.reserved1)
        return r
    }

    /// The sregs for this state, keeping fields the harness does not model (EFER, APIC base,
    /// interrupt bitmap) from `base`.
    func kvmSregs(base: kvm_sregs) -> kvm_sregs {
        var s = base
        s.cs = cs.kvm; s.ds = ds.kvm; s.es = es.kvm; s.fs = fs.kvm; s.gs = gs.kvm; s.ss = ss.kvm
        s.tr = tr.kvm; s.ldt = ldtr.kvm
        s.gdt.base = UInt64(gdtr.base); s.gdt.limit = gdtr.limit
        s.idt.base = UInt64(idtr.base); s.idt.limit = idtr.limit
        s.cr0 = UInt64(cr0); s.cr2 = UInt64(cr2); s.cr3 = UInt64(cr3); s.cr4 = UInt64(cr4)
        return s
    }
}

// The backend's state is touched on every exit by the one thread that runs the vCPU (the
// kicker, the only part other threads use, is separate and atomic): unchecked exclusivity, as
// the runtime's dynamic checks cost about as much as the rest of the bookkeeping per exit.
/// The KVM execution backend: one VM, one vCPU, the guest memory mapped at physical 0.
///
/// - Instruction assist: an instruction KVM's emulator refuses (`KVM_EXIT_INTERNAL_ERROR`,
///   emulation failure: INT n, IRET and friends on PVM hosts) is finished by the assist inside
///   `run()`, which then goes on running the guest; the caller sees only what the instruction
///   led to.
/// - String I/O: one `KVM_EXIT_IO` with several elements is handed out element by element (see
///   `run(instructionBudget:)`).
/// - Threads: the backend is used from one thread at a time; only `kicker` (and `kick()`) may be
///   called from others.
public final class KVMBackend: ExecutionBackend, @unchecked Sendable {
    public let kind = BackendKind.kvm
    public let memory: GuestMemory
    @exclusivity(unchecked) public private(set) var statistics = BackendStatistics()
    public let system: KVMSystem
    public let vm: KVMVirtualMachine
    public let vcpu: KVMVCPU
    /// The options the backend was made with.
    public let options: BackendOptions
    /// Finishes refused instructions and delivers external interrupts (nil: emulation failures
    /// are returned as `.internalError`, and external interrupts are unsupported).
    private let assist: (any InstructionAssist)?
    @exclusivity(unchecked) private var lastSregs: kvm_sregs?
    /// The state last read or written, while it is still what the vCPU holds (cleared by `run`).
    @exclusivity(unchecked) private var knownState: CPUState?
    /// The port I/O exit whose elements are being handed out.
    @exclusivity(unchecked) private var pendingIO: PortIOElements?
    /// An exit KVM reported while finishing an IN (`completePortIn`), for the next `run()`.
    @exclusivity(unchecked) private var deferredExit: KVMExit?

    /// Creates the VM and vCPU over `memory` on the device `options.kvmDevicePath`, moving
    /// registers as `options.kvmSyncRegisters` says and kicking with `options.kickSignal`.
    /// `assist` (normally the interpreter's) finishes what KVM's emulator refuses.
    public init(memory: GuestMemory, options: BackendOptions = BackendOptions(),
                assist: (any InstructionAssist)? = nil) throws(HarnessError) {
        self.memory = memory
        self.options = options
        self.assist = assist
        let system = try KVMSystem(path: options.kvmDevicePath)
        guard system.hasImmediateExit else { throw .kvmMissingCapability("KVM_CAP_IMMEDIATE_EXIT") }
        self.system = system
        self.vm = try system.createVM()
        try vm.mapMemory(memory)
        self.vcpu = try vm.createVCPU(syncRegisters: options.kvmSyncRegisters, kickSignal: options.kickSignal)
    }

    /// What other threads use to end a `run()` (timeouts): `KVMKicker`.
    public var kicker: (any BackendKicker)? { vcpu.kicker }

    /// Interrupts a KVM_RUN in progress from another thread (the same as `kicker?.kick()`).
    public func kick() { vcpu.kicker.kick() }

    public func readState() throws(HarnessError) -> CPUState {
        if let knownState { return knownState }
        // Synced registers are read in place from kvm_run (after an exit, the first touch of
        // that page is the expensive part; copying the structures first doubled it). The
        // write path then takes its sregs base from kvm_run too, so none is kept here.
        if let state = vcpu.withSyncedRegisters({ regs, sregs in CPUState(regs: regs, sregs: sregs) }) {
            knownState = state
            return state
        }
        let s = try vcpu.getSregs()
        lastSregs = s
        let state = CPUState(regs: try vcpu.getRegs(), sregs: s)
        knownState = state
        return state
    }

    public func writeState(_ state: CPUState) throws(HarnessError) {
        // Fast path: when no segment, table or control register changes (a fault resumed in the
        // same ring with the same selectors), only the general registers go back to KVM.
        if let known = knownState, CPUState.sameSystemState(known, state) {
            try vcpu.setRegs(state.kvmRegs)
            knownState = state
            return
        }
        // Unknown until both parts are in.
        knownState = nil
        let base: kvm_sregs
        if let lastSregs { base = lastSregs } else { base = try vcpu.getSregs() }
        let s = state.kvmSregs(base: base)
        try vcpu.setSregs(s)
        lastSregs = s
        try vcpu.setRegs(state.kvmRegs)
        knownState = state
        // Debug registers are not part of sregs; the harness leaves them at their reset values on KVM.
    }

    /// Writes only the general registers, EIP and EFLAGS (the fast resume path when no segment
    /// or system register changed).
    public func writeGeneralRegisters(_ state: CPUState) throws(HarnessError) {
        try vcpu.setRegs(state.kvmRegs)
        knownState = nil
    }

    /// Runs the guest to its next exit.
    ///
    /// String I/O: a `KVM_EXIT_IO` with `count` elements becomes `count` exits. For OUT, this
    /// call returns element 0 and the next `count - 1` calls return elements 1…count-1 without
    /// entering KVM. For IN, each call returns `.portIn` for one element and `completePortIn`
    /// stores that element's value; an element not answered is handed out again (as the
    /// interpreter re-executes an unanswered IN). After the last element the next call enters
    /// KVM again. `readState` between the elements returns the state of the exit.
    public func run(instructionBudget: Int) throws(HarnessError) -> GuestExit {
        if let next = nextPendingElement() { return next }
        var exit: KVMExit
        if let deferred = deferredExit {
            deferredExit = nil
            exit = deferred
        } else {
            exit = try enterKVM()
        }
        while true {
            switch exit {
            case let .io(io):
                let elements = PortIOElements(io)
                pendingIO = elements
                return elements.first(in: UnsafeRawBufferPointer(vcpu.ioData))
            case let .exit(.internalError(suberror, _, bytes)) where suberror == ckvm_KVM_INTERNAL_ERROR_EMULATION && assist != nil:
                if let exit = try assistRefusedInstruction(bytes) { return exit }
            case let .exit(.singleStep(address)) where interruptWindowWanted:
                // The backend's own step towards an interrupt window (see `requestInterruptWindow`).
                if try interruptWindowIsOpen() { return .interruptWindowOpen }
                if vcpu.singleStepping { return .singleStep(address: address) }
            case let .exit(exit):
                return exit
            }
            exit = try enterKVM()
        }
    }

    /// One KVM_RUN; the state read before it is stale afterwards.
    private func enterKVM() throws(HarnessError) -> KVMExit {
        statistics.runs += 1
        lastSregs = nil
        knownState = nil
        return try vcpu.run()
    }

    /// The next element of the pending I/O exit, or nil (pending I/O done) when KVM must run.
    private func nextPendingElement() -> GuestExit? {
        guard var elements = pendingIO else { return nil }
        let next = elements.next(in: UnsafeRawBufferPointer(vcpu.ioData))
        pendingIO = next == nil ? nil : elements
        return next
    }

    /// Hands an instruction KVM refused to the assist. Returns the exit for the caller, or nil
    /// when the instruction completed and the guest should run on.
    private func assistRefusedInstruction(_ bytes: [UInt8]) throws(HarnessError) -> GuestExit? {
        guard let assist else { return nil }
        var state = try readState()
        let eip = state.eip
        switch assist.assist(state: &state, memory: memory) {
        case .completed:
            try writeState(state)
            statistics.assists += 1
            // Single-stepping: the assisted instruction was the step.
            return vcpu.singleStepping ? .singleStep(address: state.cs.base &+ state.eip) : nil
        case let .exit(e):
            try writeState(state)
            statistics.assists += 1
            return e
        case let .failed(why):
            return .assistFailed(instructionBytes: bytes, address: eip, why: why)
        }
    }

    /// Answers the IN element `run()` handed out last. After the last element of the exit, KVM
    /// finishes the instruction at once (without running the guest), so the state read next
    /// shows it done, as on the interpreter: AL/AX/EAX or the INS destination written, EIP (and
    /// ESI/EDI/ECX) moved on. State written between an IN exit and this call is lost to KVM's
    /// completion of the instruction: answer first.
    public func completePortIn(value: UInt32) throws(HarnessError) {
        guard var elements = pendingIO, elements.io.isIn else { throw .guestProtocol("completePortIn without a pending IN") }
        guard elements.answer(value, in: vcpu.ioData) else {
            throw .guestProtocol("IN element \(elements.handedOut - 1) is outside the kvm_run mapping")
        }
        pendingIO = elements
        if elements.answered == elements.io.count {
            pendingIO = nil
            try finishPendingIn()
        }
    }

    /// Lets KVM complete the IN of the last exit now (one KVM_RUN that runs no guest code).
    private func finishPendingIn() throws(HarnessError) {
        statistics.runs += 1
        lastSregs = nil
        knownState = nil
        deferredExit = try vcpu.completePendingOperation()
    }

    /// Whether an IN element waits for `completePortIn`.
    private var awaitsInAnswer: Bool {
        guard let p = pendingIO else { return false }
        return p.io.isIn && p.answered < p.handedOut
    }

    /// `KVM_NMI`: KVM delivers it through IDT vector 02h when the guest can take it.
    public func injectNMI() throws(HarnessError) {
        try vcpu.injectNMI()
    }

    /// Delivers `vector` through the guest's IDT with the assist (KVM has no call that injects
    /// an external interrupt into a guest without an in-kernel interrupt controller): the
    /// interrupt shadow comes from KVM_GET_VCPU_EVENTS, IF from the state.
    public func deliverExternalInterrupt(vector: UInt8) throws(HarnessError) -> InterruptDelivery {
        guard let assist else { throw .unsupported("external interrupts on the KVM backend without an instruction assist") }
        guard !awaitsInAnswer else { throw .guestProtocol("an external interrupt while an IN waits for completePortIn") }
        let inhibited = try vcpu.getEvents().interrupt.shadow != 0
        var state = try readState()
        let delivery = assist.deliverInterrupt(vector: vector, state: &state, memory: memory, inhibited: inhibited)
        if delivery == .delivered { try writeState(state) }
        return delivery
    }

    public func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        try vcpu.setHardwareBreakpoints(addresses)
    }

    /// KVM's emulator turns an instruction it cannot run at CPL > 0 into a #UD injected into the
    /// guest, with no exit (INT n, INT3, INTO, BOUND, IRET on PVM hosts), so the assist never saw
    /// it. This runs the instruction in the assist from the state before the #UD: a real #UD
    /// comes out as the same #UD (delivered by the interpreter, with the same frame), anything
    /// else as what the instruction really does.
    public func reexamineUndefinedOpcode(preFaultState: CPUState) throws(HarnessError) -> GuestExit? {
        guard let assist, preFaultState.cpl > 0, preFaultState.eflags & EFlags.vm == 0 else { return nil }
        var state = preFaultState
        switch assist.assist(state: &state, memory: memory) {
        case .completed:
            try writeState(state)
            statistics.assists += 1
            return .interrupted
        case let .exit(e):
            try writeState(state)
            statistics.assists += 1
            return e
        case .failed:
            return nil
        }
    }

    /// While wanted, every KVM_RUN sets `request_interrupt_window` (KVM exits with
    /// KVM_EXIT_IRQ_WINDOW_OPEN once IF = 1 and no interrupt shadow blocks) and the guest is
    /// single-stepped, with the window checked after each step: PVM hosts, which emulate every
    /// instruction, do not report the window before the guest exits for another reason (seen:
    /// an IRQ raised under CLI ran past STI to the HLT). The steps cost a KVM_RUN each, only
    /// while a request waits for IF.
    public func requestInterruptWindow(_ wanted: Bool) throws(HarnessError) {
        guard wanted != interruptWindowWanted else { return }
        try vcpu.setWindowStepping(wanted)
        interruptWindowWanted = wanted
        vcpu.interruptWindowWanted = wanted
    }

    @exclusivity(unchecked) private var interruptWindowWanted = false

    /// Whether the guest would take an external interrupt at this boundary.
    private func interruptWindowIsOpen() throws(HarnessError) -> Bool {
        guard try readState().eflags & EFlags.if != 0 else { return false }
        return try vcpu.getEvents().interrupt.shadow == 0
    }

    public func setSingleStep(_ enabled: Bool) throws(HarnessError) {
        try vcpu.setSingleStep(enabled)
    }

    /// What `captureVCPU` holds: the CPU state (regs and sregs) and two bits of the vCPU events.
    public static let capturedParts = ["cpu", "interrupt-shadow", "nmi-pending"]

    /// Registers (regs and sregs) plus the interrupt shadow and NMI-pending bit of
    /// KVM_GET_VCPU_EVENTS.
    public func captureVCPU() throws(HarnessError) -> VCPUSnapshot {
        let cpu = try readState()
        let events = try vcpu.getEvents()
        return VCPUSnapshot(cpu: cpu, interruptShadow: events.interrupt.shadow != 0, nmiPending: events.nmi.pending != 0,
                            capturedParts: Self.capturedParts)
    }

    /// Writes the registers and sets the interrupt shadow (as after STI) and NMI-pending bit with
    /// KVM_SET_VCPU_EVENTS, keeping KVM's other event state. Ends any string I/O being handed
    /// out: the snapshot replaces the instruction it belonged to (an IN still waiting for its
    /// answers is first finished by KVM with what it has, so that it cannot land on the
    /// restored state later).
    public func restoreVCPU(_ snapshot: VCPUSnapshot) throws(HarnessError) {
        if let p = pendingIO, p.io.isIn {
            try finishPendingIn()
        }
        pendingIO = nil
        deferredExit = nil
        try writeState(snapshot.cpu)
        var events = try vcpu.getEvents()
        events.flags = ckvm_KVM_VCPUEVENT_VALID_SHADOW | ckvm_KVM_VCPUEVENT_VALID_NMI_PENDING
        events.interrupt.shadow = snapshot.interruptShadow ? ckvm_KVM_X86_SHADOW_INT_STI : 0
        events.nmi.pending = snapshot.nmiPending ? 1 : 0
        try vcpu.setEvents(events)
    }
}
