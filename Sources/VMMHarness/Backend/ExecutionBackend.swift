// The backend layer: what every execution engine offers the machine above it. Nothing above this
// layer names a concrete backend; `Backends.make` (BackendFactory.swift) is the one place that
// builds them.

/// Which execution engine runs the guest.
public enum BackendKind: String, Sendable, Codable, CaseIterable {
    /// Hardware virtualization through `/dev/kvm`.
    case kvm
    /// The pure-Swift x86 interpreter.
    case interpreter
}

/// Why a backend stopped running the guest, decoded once from the backend's native form
/// (`kvm_run` for KVM). Both backends report the same exits for the same guest.
///
/// String I/O (INS/OUTS, with or without REP) reaches the machine element by element: one
/// `.portOut` or `.portIn` per element, with the element's size, in the order the CPU performs
/// them. A KVM exit with `io.count > 1` is split by the KVM backend; the interpreter exits once
/// per element.
public enum GuestExit: Equatable, Sendable {
    /// The guest executed OUT (or one element of OUTS). The element is complete.
    case portOut(port: UInt16, size: Int, value: UInt32)
    /// The guest executed IN (or one element of INS); the host must answer with `completePortIn`
    /// before running again.
    case portIn(port: UInt16, size: Int)
    /// An access to guest-physical memory that has no RAM (`KVM_EXIT_MMIO`).
    case mmio(address: UInt64, isWrite: Bool, length: Int, data: UInt64)
    /// HLT (with interrupts that can never arrive: the run ends).
    case halt
    /// Triple fault or another shutdown condition.
    case shutdown(reason: String)
    /// `KVM_EXIT_FAIL_ENTRY`: the CPU refused the guest state.
    case failEntry(reason: UInt64)
    /// `KVM_EXIT_INTERNAL_ERROR`; for emulation failures (`suberror` 1) the instruction bytes when
    /// KVM gives them. A backend with an instruction assist finishes such instructions itself and
    /// reports this exit only when the assist could not.
    case internalError(suberror: UInt32, data: [UInt64], instructionBytes: [UInt8])
    /// The run was interrupted (a kick or signal on KVM, an exhausted budget on the interpreter).
    case interrupted
    /// Execution reached an address set with `setBreakpoints` (the instruction there has not run).
    case breakpoint(address: UInt32)
    /// One instruction ran with single-stepping on (`setSingleStep`); `address` is the next one.
    case singleStep(address: UInt32)
    /// The guest can take an external interrupt now (IF set, no interrupt shadow), after
    /// `requestInterruptWindow(true)` (`KVM_EXIT_IRQ_WINDOW_OPEN`).
    case interruptWindowOpen
    /// An instruction the backend's assist could not finish (a KVM emulation failure that the
    /// interpreter refused too); `why` says what happened.
    case assistFailed(instructionBytes: [UInt8], address: UInt32, why: String)
    /// An exit reason the harness does not know (`KVM_EXIT_*` raw value).
    case unknown(reason: UInt32)
}

/// Counters a backend keeps for reports and benchmarks.
public struct BackendStatistics: Equatable, Sendable, Codable {
    /// Guest instructions executed (interpreter only; 0 on KVM, which does not count them).
    public var instructions: UInt64 = 0
    /// Calls into the backend's run loop (`KVM_RUN` ioctls, interpreter run slices).
    public var runs: UInt64 = 0
    /// Instructions finished by the interpreter on behalf of KVM (instruction assist).
    public var assists: UInt64 = 0
    public init() {}
}

/// What happened when the machine asked a backend to deliver an external interrupt.
public enum InterruptDelivery: Equatable, Sendable {
    /// The interrupt went through the guest's IDT: the next `run()` starts in its handler.
    case delivered
    /// The guest cannot take it now: EFLAGS.IF is clear, or the STI / MOV SS / POP SS interrupt
    /// shadow covers the next instruction. The request stays pending with the caller.
    case notAccepted
    /// Delivering it shut the CPU down (a triple fault while pushing the frame).
    case shutdown(reason: String)
}

/// Something another thread may call to make a running (or about-to-run) `run()` return
/// `.interrupted`: a timeout's watchdog, later a debugger's Ctrl-C.
public protocol BackendKicker: AnyObject, Sendable {
    /// Interrupts the backend's current or next run. Safe from any thread, any number of times.
    func kick()
}

/// The whole vCPU state a backend can capture and restore (room for snapshots: what each
/// backend can capture grows with it; `capturedParts` says what a capture holds).
public struct VCPUSnapshot: Equatable, Sendable {
    /// General, segment (with hidden parts), control and table registers.
    public var cpu: CPUState
    /// Whether the STI / MOV SS interrupt shadow covers the next instruction.
    public var interruptShadow: Bool
    /// Whether an NMI is waiting to be delivered.
    public var nmiPending: Bool
    /// Backend-neutral names of what else was captured (e.g. "fpu").
    public var capturedParts: [String]
    /// The x87 control and status words, when the backend captured them (nil: not captured; a
    /// restore then leaves the target's words as they are).
    public var x87: X87ControlWords?
    public init(cpu: CPUState, interruptShadow: Bool = false, nmiPending: Bool = false, capturedParts: [String] = [],
                x87: X87ControlWords? = nil) {
        self.cpu = cpu
        self.interruptShadow = interruptShadow
        self.nmiPending = nmiPending
        self.capturedParts = capturedParts
        self.x87 = x87
    }
}

/// The x87 FPU's control word (FCW) and status word (FSW), the part of the FPU state a snapshot
/// carries.
public struct X87ControlWords: Equatable, Sendable {
    /// FCW (037Fh after FNINIT).
    public var control: UInt16
    /// FSW (0 after FNINIT).
    public var status: UInt16
    public init(control: UInt16 = 0x37F, status: UInt16 = 0) {
        self.control = control
        self.status = status
    }
}

/// One engine that runs the guest image over a `GuestMemory`. The machine (`Machine`) only calls
/// `run()`, decides what each `GuestExit` means, and moves state in and out; everything it needs
/// from an engine is here, so it never needs to know which engine it has.
///
/// Operations an engine cannot do throw `HarnessError.unsupported` (the protocol's defaults).
public protocol ExecutionBackend: AnyObject {
    /// Which engine this is.
    var kind: BackendKind { get }
    /// The guest memory the engine runs on.
    var memory: GuestMemory { get }
    /// Counters.
    var statistics: BackendStatistics { get }
    /// Reads the complete CPU state.
    func readState() throws(HarnessError) -> CPUState
    /// Replaces the complete CPU state; the next `run()` continues from it.
    func writeState(_ state: CPUState) throws(HarnessError)
    /// Runs the guest until the next exit. `instructionBudget` bounds interpreters (ignored by KVM,
    /// which is bounded by its `kicker` from a timer).
    func run(instructionBudget: Int) throws(HarnessError) -> GuestExit
    /// Supplies the value an IN instruction (or one INS element) reads, after `.portIn`.
    func completePortIn(value: UInt32) throws(HarnessError)
    /// What other threads use to interrupt `run()`; nil when runs end by themselves (the
    /// interpreter's budget bounds every run).
    var kicker: (any BackendKicker)? { get }
    /// Queues a non-maskable interrupt (`KVM_NMI`; the interpreter delivers it through IDT
    /// vector 02h at once).
    func injectNMI() throws(HarnessError)
    /// Delivers an external interrupt on `vector` through the guest's IDT, as the CPU takes one
    /// from the PIC, if the guest accepts interrupts now (IF set, no interrupt shadow).
    func deliverExternalInterrupt(vector: UInt8) throws(HarnessError) -> InterruptDelivery
    /// With `wanted`, the next instruction boundary at which the guest accepts an external
    /// interrupt (IF = 1, no STI / MOV SS shadow) ends `run()` with `.interruptWindowOpen`, so a
    /// request that arrived while IF was clear is delivered just after the instruction that
    /// follows STI, as the CPU takes it.
    func requestInterruptWindow(_ wanted: Bool) throws(HarnessError)
    /// Stops execution with `.breakpoint` before the instruction at any of `addresses` (linear,
    /// at most 4, like the debug registers) runs. An empty list clears them. Used to see a guest
    /// fault handler jump to its previous handler.
    func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError)
    /// With `enabled`, every `run()` executes one instruction and returns `.singleStep`.
    func setSingleStep(_ enabled: Bool) throws(HarnessError)
    /// The guest took #UD from an outer ring at `preFaultState` (the state before the faulting
    /// instruction, rebuilt from the frame). A host that injects #UD for instructions it cannot
    /// emulate there (KVM's emulator does at CPL > 0, so a ring-3 INT n on a PVM host arrives as
    /// #UD) runs the instruction again through its assist from that state and returns the exit it
    /// led to (`.interrupted` when it simply completed). nil: the #UD stands (the default; the
    /// interpreter's #UDs are always the CPU's).
    func reexamineUndefinedOpcode(preFaultState: CPUState) throws(HarnessError) -> GuestExit?
    /// Captures the whole vCPU state.
    func captureVCPU() throws(HarnessError) -> VCPUSnapshot
    /// Restores a state `captureVCPU` returned (on this backend or another).
    func restoreVCPU(_ snapshot: VCPUSnapshot) throws(HarnessError)
}

extension ExecutionBackend {
    public var kicker: (any BackendKicker)? { nil }

    public func injectNMI() throws(HarnessError) {
        throw .unsupported("NMI injection on the \(kind.rawValue) backend")
    }

    public func deliverExternalInterrupt(vector: UInt8) throws(HarnessError) -> InterruptDelivery {
        throw .unsupported("external interrupts on the \(kind.rawValue) backend")
    }

    public func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        guard addresses.isEmpty else { throw .unsupported("breakpoints on the \(kind.rawValue) backend") }
    }

    public func requestInterruptWindow(_ wanted: Bool) throws(HarnessError) {
        guard !wanted else { throw .unsupported("interrupt windows on the \(kind.rawValue) backend") }
    }

    public func setSingleStep(_ enabled: Bool) throws(HarnessError) {
        guard !enabled else { throw .unsupported("single-stepping on the \(kind.rawValue) backend") }
    }

    public func reexamineUndefinedOpcode(preFaultState: CPUState) throws(HarnessError) -> GuestExit? { nil }

    public func captureVCPU() throws(HarnessError) -> VCPUSnapshot {
        throw .unsupported("capturing the vCPU on the \(kind.rawValue) backend")
    }

    public func restoreVCPU(_ snapshot: VCPUSnapshot) throws(HarnessError) {
        throw .unsupported("restoring the vCPU on the \(kind.rawValue) backend")
    }
}
