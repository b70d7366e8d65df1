/// Which execution engine runs the guest.
public enum BackendKind: String, Sendable, Codable, CaseIterable {
    /// Hardware virtualization through `/dev/kvm`.
    case kvm
    /// The pure-Swift x86 interpreter.
    case interpreter
}

/// Why a backend stopped running the guest, decoded once from the backend's native form
/// (`kvm_run` for KVM). Both backends report the same exits for the same guest.
public enum GuestExit: Equatable, Sendable {
    /// The guest executed OUT. The instruction is complete (EIP is past it).
    case portOut(port: UInt16, size: Int, value: UInt32)
    /// The guest executed IN; the host must answer with `completePortIn` before running again.
    case portIn(port: UInt16, size: Int)
    /// An access to guest-physical memory that has no RAM (`KVM_EXIT_MMIO`).
    case mmio(address: UInt64, isWrite: Bool, length: Int, data: UInt64)
    /// HLT (with interrupts that can never arrive: the run ends).
    case halt
    /// Triple fault or another shutdown condition.
    case shutdown(reason: String)
    /// `KVM_EXIT_FAIL_ENTRY`: the CPU refused the guest state.
    case failEntry(reason: UInt64)
    /// `KVM_EXIT_INTERNAL_ERROR`; for emulation failures (`suberror` 1) the instruction bytes when KVM gives them.
    case internalError(suberror: UInt32, data: [UInt64], instructionBytes: [UInt8])
    /// The run was interrupted (a signal/immediate exit on KVM, an exhausted budget on the interpreter).
    case interrupted
    /// Execution reached an address set with `setBreakpoints` (the instruction there has not run).
    case breakpoint(address: UInt32)
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

/// One engine that runs the guest image over a `GuestMemory`. The machine loop (`Machine`) only
/// calls `run()`, decides what each `GuestExit` means, and moves state in and out.
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
    /// which is bounded by `requestInterrupt` from a timer).
    func run(instructionBudget: Int) throws(HarnessError) -> GuestExit
    /// Supplies the value an IN instruction reads (after `.portIn`).
    func completePortIn(value: UInt32) throws(HarnessError)
    /// Stops execution with `.breakpoint` before the instruction at any of `addresses` (linear,
    /// at most 4, like the debug registers) runs. An empty list clears them. Used to see a guest
    /// fault handler jump to its previous handler.
    func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError)
}

extension ExecutionBackend {
    /// Backends without breakpoint support refuse them.
    public func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        guard addresses.isEmpty else { throw .unsupported("breakpoints on the \(kind.rawValue) backend") }
    }
}
