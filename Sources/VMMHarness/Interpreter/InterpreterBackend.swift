/// The interpreter behind the `ExecutionBackend` protocol.
///
/// Everything happens on the one `Interpreter` it owns, so what the CPU keeps between
/// instructions stays right across calls: external interrupts and NMIs are delivered on it (the
/// STI / MOV SS / POP SS shadow of the instruction it last completed is respected), and a capture
/// holds the shadow and the x87 words.
public final class InterpreterBackend: ExecutionBackend {
    public let kind: BackendKind = .interpreter
    public let memory: GuestMemory
    /// The interpreter this backend drives.
    public let interpreter: Interpreter
    @exclusivity(unchecked) public private(set) var statistics = BackendStatistics()
    /// Linear addresses that stop execution before the instruction there runs (`setBreakpoints`).
    @exclusivity(unchecked) private var breakpoints: [UInt32] = []
    /// Whether `run()` executes one instruction and returns `.singleStep` (`setSingleStep`).
    @exclusivity(unchecked) private var singleStepping = false
    /// An NMI injected while an IN/INS waited for `completePortIn`: delivered when the next
    /// `run()` starts (the instruction is not finished, so there is no boundary to take it at).
    @exclusivity(unchecked) private var nmiPending = false
    /// An exit already decided for the next `run()`: an NMI whose delivery shut the CPU down.
    @exclusivity(unchecked) private var pendingExit: GuestExit?

    /// What `captureVCPU` holds beyond the `CPUState` (`VCPUSnapshot.capturedParts`).
    public static let capturedParts = ["interruptShadow", "nmiPending", "x87ControlWord", "x87StatusWord"]

    public init(memory: GuestMemory, state: CPUState) {
        self.memory = memory
        self.interpreter = Interpreter(memory: memory, state: state)
    }

    /// Always nil: every `run()` ends by itself, after at most its instruction budget
    /// (`.interrupted`), so there is nothing for another thread to interrupt. Timeouts are
    /// checked between runs.
    public var kicker: (any BackendKicker)? { nil }

    public func readState() throws(HarnessError) -> CPUState {
        interpreter.state
    }

    /// Replaces the CPU state (`Interpreter.state`). A state that differs from the current one
    /// ends the interrupt shadow (it belonged to the instruction last completed; a host write,
    /// such as a fault resumed from its frame, starts from a new point) and drops an IN/INS
    /// waiting for `completePortIn` (the instruction runs again from the new state). Writing back
    /// exactly the state read keeps the shadow. `restoreVCPU` sets the shadow explicitly.
    public func writeState(_ state: CPUState) throws(HarnessError) {
        interpreter.state = state
    }

    /// Runs at most `instructionBudget` instructions; an exhausted budget is `.interrupted`.
    /// With single-stepping on, runs exactly one (see `setSingleStep`).
    public func run(instructionBudget: Int) throws(HarnessError) -> GuestExit {
        statistics.runs &+= 1
        if let exit = pendingExit {
            pendingExit = nil
            return exit
        }
        if nmiPending {
            deliverNMI()
            if let exit = pendingExit {
                pendingExit = nil
                return exit
            }
        }
        let before = interpreter.instructionsExecuted
        defer { statistics.instructions &+= interpreter.instructionsExecuted &- before }
        if singleStepping {
            let linear = interpreter.csBase &+ interpreter.eip
            if breakpoints.contains(linear) { return .breakpoint(address: linear) }
            if let stop = interpreter.step() { return Self.exit(for: stop) }
            return .singleStep(address: interpreter.csBase &+ interpreter.eip)
        }
        if interruptWindowWanted {
            // One instruction at a time while a request waits for IF (a few instructions: the
            // STI and the one after it), checking at every boundary.
            for _ in 0..<max(instructionBudget, 1) {
                if acceptsInterrupts { return .interruptWindowOpen }
                let linear = interpreter.csBase &+ interpreter.eip
                if breakpoints.contains(linear) { return .breakpoint(address: linear) }
                if let stop = interpreter.step() { return Self.exit(for: stop) }
            }
            return acceptsInterrupts ? .interruptWindowOpen : .interrupted
        }
        let stop: InterpreterStop
        if breakpoints.isEmpty {
            stop = interpreter.run(budget: instructionBudget)
        } else {
            // Slow path, one instruction at a time, only while breakpoints are set (a guest fault
            // handler runs for a few instructions).
            var result = InterpreterStop.budgetExhausted
            for _ in 0..<max(instructionBudget, 1) {
                let linear = interpreter.state.cs.base &+ interpreter.state.eip
                if breakpoints.contains(linear) { return .breakpoint(address: linear) }
                if let s = interpreter.step() {
                    result = s
                    break
                }
            }
            stop = result
        }
        return Self.exit(for: stop)
    }

    /// Whether `run()` stops at the first boundary where the guest accepts an interrupt.
    @exclusivity(unchecked) private var interruptWindowWanted = false

    /// Whether an external interrupt would be accepted at this boundary.
    private var acceptsInterrupts: Bool {
        interpreter.flags & EFlags.if != 0 && !interpreter.interruptsInhibited && !interpreter.portInPending
    }

    public func requestInterruptWindow(_ wanted: Bool) throws(HarnessError) {
        interruptWindowWanted = wanted
    }

    /// The exit an interpreter stop is for the machine.
    static func exit(for stop: InterpreterStop) -> GuestExit {
        switch stop {
        case let .portOut(port, size, value): return .portOut(port: port, size: size, value: value)
        case let .portIn(port, size): return .portIn(port: port, size: size)
        case .halt: return .halt
        case let .shutdown(reason): return .shutdown(reason: reason)
        case let .mmio(address, isWrite, length, data):
            return .mmio(address: address, isWrite: isWrite, length: length, data: data)
        case .budgetExhausted: return .interrupted
        }
    }

    public func setBreakpoints(_ addresses: [UInt32]) throws(HarnessError) {
        guard addresses.count <= 4 else { throw .invalidArgument("at most 4 breakpoints") }
        // Copied into storage kept between calls: a guest fault handler sets and clears one per
        // call, and neither side allocates once both arrays have their capacity.
        breakpoints.removeAll(keepingCapacity: true)
        breakpoints.append(contentsOf: addresses)
    }

    /// With `enabled`, every `run()` executes exactly one instruction (delivering any exception
    /// it raises, so the next one is the handler's first) and returns `.singleStep` with the
    /// linear address of the next instruction. An instruction that stops by itself (OUT, IN, one
    /// INS/OUTS element, HLT, a shutdown, an access outside memory) returns that stop instead; a
    /// breakpoint at the current instruction returns `.breakpoint` before it runs. Independent of
    /// the guest's EFLAGS.TF.
    public func setSingleStep(_ enabled: Bool) throws(HarnessError) {
        singleStepping = enabled
    }

    public func completePortIn(value: UInt32) throws(HarnessError) {
        let before = interpreter.instructionsExecuted
        interpreter.completePortIn(value: value)
        statistics.instructions &+= interpreter.instructionsExecuted &- before
    }

    // MARK: - Interrupts

    /// Delivers `vector` through the guest's IDT on this backend's interpreter when the guest
    /// accepts interrupts: `.notAccepted` while EFLAGS.IF = 0, while the STI / MOV SS / POP SS
    /// shadow covers the next instruction (`Interpreter.interruptsInhibited`), and while an
    /// IN/INS waits for `completePortIn` (its instruction is not finished). A fault while pushing
    /// the frame is handled as the CPU does (#DF, triple fault: `.shutdown`); so is an IDT, GDT or
    /// stack outside guest memory.
    public func deliverExternalInterrupt(vector: UInt8) throws(HarnessError) -> InterruptDelivery {
        if case let .shutdown(reason)? = pendingExit { return .shutdown(reason: reason) }
        if interpreter.flags & EFlags.if == 0 || interpreter.interruptsInhibited || interpreter.portInPending {
            return .notAccepted
        }
        return Self.delivery(interpreter.deliverExternalInterrupt(vector: vector), vector: vector)
    }

    /// Delivers an NMI through IDT vector 02h now: NMIs ignore EFLAGS.IF and the interrupt
    /// shadow (NMI blocking until IRET is not modelled). Held until the next `run()` while an
    /// IN/INS waits for `completePortIn`. When delivering it shuts the CPU down, the next `run()`
    /// returns that `.shutdown`.
    public func injectNMI() throws(HarnessError) {
        if interpreter.portInPending {
            nmiPending = true
        } else {
            deliverNMI()
        }
    }

    private func deliverNMI() {
        nmiPending = false
        if case let .shutdown(reason) = Self.delivery(interpreter.deliverExternalInterrupt(vector: 0x02), vector: 0x02) {
            pendingExit = .shutdown(reason: reason)
        }
    }

    /// What an interpreter delivery ended with, for the machine.
    static func delivery(_ stop: InterpreterStop?, vector: UInt8) -> InterruptDelivery {
        switch stop {
        case nil:
            return .delivered
        case let .shutdown(reason)?:
            return .shutdown(reason: reason)
        case let .mmio(address, isWrite, _, _)?:
            return .shutdown(reason: "delivering vector \(hex(vector, width: 2)) \(isWrite ? "wrote" : "read") guest-physical \(hex(address, width: 8)), where there is no memory")
        case let stop?:
            return .shutdown(reason: "delivering vector \(hex(vector, width: 2)) stopped with \(stop)")
        }
    }

    // MARK: - Snapshots

    /// The `CPUState`, the interrupt shadow, a held NMI and the x87 control and status words
    /// (`capturedParts`). Captured between `.portIn` and `completePortIn`, it holds the state
    /// before the IN/INS element, which a restore runs again.
    public func captureVCPU() throws(HarnessError) -> VCPUSnapshot {
        VCPUSnapshot(cpu: interpreter.state, interruptShadow: interpreter.interruptsInhibited, nmiPending: nmiPending,
                     capturedParts: Self.capturedParts,
                     x87: X87ControlWords(control: interpreter.fpuControl, status: interpreter.fpuStatus))
    }

    /// Restores a snapshot (from this backend or another): the state, then the interrupt shadow
    /// and a pending NMI (delivered when the next `run()` starts), and the x87 words when the
    /// snapshot has them. An exit decided for the next run (a shutdown) is dropped.
    public func restoreVCPU(_ snapshot: VCPUSnapshot) throws(HarnessError) {
        interpreter.state = snapshot.cpu
        interpreter.interruptsInhibited = snapshot.interruptShadow
        if let x87 = snapshot.x87 {
            interpreter.fpuControl = x87.control
            interpreter.fpuStatus = x87.status
        }
        nmiPending = snapshot.nmiPending
        pendingExit = nil
    }
}
