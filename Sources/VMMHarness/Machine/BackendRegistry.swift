/// How the machine reaches the interpreter: as a backend, and as the instruction assist for KVM.
extension Harness {
    static var interpreterFactory: InterpreterFactory? {
        { memory, state in InterpreterBackend(memory: memory, state: state) }
    }

    static var assistFactory: (@Sendable () -> any InstructionAssist)? {
        { InterpreterAssist() }
    }
}

/// Finishes one instruction KVM's emulator refused (INT n, INT3, INTO, BOUND, IRET on PVM hosts):
/// the interpreter runs exactly that instruction on the vCPU's state and guest memory, including
/// delivering any exception it raises through the guest's IDT.
final class InterpreterAssist: InstructionAssist {
    /// One interpreter kept across assists (its decode cache validates every hit against memory).
    private var interpreter: Interpreter?

    func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome {
        let interpreter: Interpreter
        if let existing = self.interpreter, existing.memory === memory {
            interpreter = existing
            interpreter.state = state
        } else {
            interpreter = Interpreter(memory: memory, state: state)
            self.interpreter = interpreter
        }
        let stop = interpreter.step()
        state = interpreter.state
        switch stop {
        case nil:
            return .completed
        case let .portOut(port, size, value)?:
            return .exit(.portOut(port: port, size: size, value: value))
        case let .portIn(port, _)?:
            return .failed("IN to port \(hex(port, width: 4)) during an assist")
        case .halt?:
            return .exit(.halt)
        case let .shutdown(reason)?:
            return .exit(.shutdown(reason: reason))
        case let .mmio(address, isWrite, length, data)?:
            return .exit(.mmio(address: address, isWrite: isWrite, length: length, data: data))
        case .budgetExhausted?:
            return .failed("no instruction executed")
        }
    }
}
