/// The interpreter behind the `ExecutionBackend` protocol.
public final class InterpreterBackend: ExecutionBackend {
    public let kind: BackendKind = .interpreter
    public let memory: GuestMemory
    /// The interpreter this backend drives.
    public let interpreter: Interpreter
    public private(set) var statistics = BackendStatistics()

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
        let stop = interpreter.run(budget: instructionBudget)
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

    public func completePortIn(value: UInt32) throws(HarnessError) {
        let before = interpreter.instructionsExecuted
        interpreter.completePortIn(value: value)
        statistics.instructions &+= interpreter.instructionsExecuted &- before
    }
}
