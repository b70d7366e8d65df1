/// The interpreter behind the `ExecutionBackend` protocol.
public final class InterpreterBackend: ExecutionBackend {
    public let kind: BackendKind = .interpreter
    public let memory: GuestMemory
    /// The interpreter this backend drives.
    public let interpreter: Interpreter
    @exclusivity(unchecked) public private(set) var statistics = BackendStatistics()
    /// Linear addresses that stop execution before the instruction there runs (`setBreakpoints`).
    @exclusivity(unchecked) private var breakpoints: [UInt32] = []

    public init(memory: GuestMemory, state: CPUState) {
        self.memory = memory
        self.interpreter = Interpreter(memory: memory, state: state)
    }

    public func readState() throws(HarnessError) -> CPUState {
        interpreter.state
    }

    public func writeState(_ state: CPUState) throws(HarnessError) {
        interpreter.state = state
    }

    /// Runs at most `instructionBudget` instructions; an exhausted budget is `.interrupted`.
    public func run(instructionBudget: Int) throws(HarnessError) -> GuestExit {
        statistics.runs &+= 1
        let before = interpreter.instructionsExecuted
        let stop: InterpreterStop
        if breakpoints.isEmpty {
            stop = interpreter.run(budget: instructionBudget)
        } else {
            // Slow path, one instruction at a time, only while breakpoints are set (a guest fault
            // handler runs for a few instructions).
            var result = InterpreterStop.budgetExhausted
            for _ in 0..<max(instructionBudget, 1) {
                let linear = interpreter.state.cs.base &+ interpreter.state.eip
                if breakpoints.contains(linear) {
                    statistics.instructions &+= interpreter.instructionsExecuted &- before
                    return .breakpoint(address: linear)
                }
                if let s = interpreter.step() {
                    result = s
                    break
                }
            }
            stop = result
        }
        statistics.instructions &+= interpreter.instructionsExecuted &- before
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

    public func completePortIn(value: UInt32) throws(HarnessError) {
        let before = interpreter.instructionsExecuted
        interpreter.completePortIn(value: value)
        statistics.instructions &+= interpreter.instructionsExecuted &- before
    }
}
