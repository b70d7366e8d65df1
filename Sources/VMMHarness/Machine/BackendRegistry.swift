/// Finishes one instruction KVM's emulator refused (INT n, INT3, INTO, BOUND, IRET on PVM hosts):
/// the interpreter runs exactly that instruction on the vCPU's state and guest memory, including
/// delivering any exception it raises through the guest's IDT.
final class InterpreterAssist: InstructionAssist {
    /// One interpreter kept across assists (its decode cache validates every hit against memory).
    private var interpreter: Interpreter?
    /// Where the runtime's IDT stubs lie (linear = physical: the runtime is identity-mapped).
    private let stubs: Range<UInt32>?

    init() {
        if let l = try? RuntimeImage.layout() {
            stubs = l.stubBase..<(l.stubBase &+ l.stubSize &* UInt32(l.vectorCount))
        } else {
            stubs = nil
        }
    }

    /// Instructions of a runtime stub (`push 0`, `pushal`, `out`) run after the refused one.
    static let stubInstructionLimit = 8

    func deliverInterrupt(vector: UInt8, state: inout CPUState, memory: GuestMemory, inhibited: Bool) -> InterruptDelivery {
        let interpreter = interpreter(for: memory, state: state)
        if vector != 0x02 && (inhibited || state.eflags & EFlags.if == 0) { return .notAccepted }
        if case let .shutdown(reason)? = interpreter.deliverExternalInterrupt(vector: vector) { return .shutdown(reason: reason) }
        state = interpreter.state
        return .delivered
    }

    private func interpreter(for memory: GuestMemory, state: CPUState) -> Interpreter {
        if let existing = self.interpreter, existing.memory === memory {
            existing.state = state
            return existing
        }
        let made = Interpreter(memory: memory, state: state)
        self.interpreter = made
        return made
    }

    func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome {
        let interpreter: Interpreter
        if let existing = self.interpreter, existing.memory === memory {
            interpreter = existing
            interpreter.state = state
        } else {
            interpreter = Interpreter(memory: memory, state: state)
            self.interpreter = interpreter
        }
        var stop = interpreter.step()
        // The refused instruction was INT n (or INT3, INTO, BOUND) delivered into one of the
        // runtime's own stubs: run the stub to its OUT here too. Handing it back to KVM would
        // cost a second exit (about 10 µs on a PVM host) for three instructions.
        if stop == nil, let stubs {
            var n = 0
            while n < Self.stubInstructionLimit, stubs.contains(interpreter.csBase &+ interpreter.eip) {
                stop = interpreter.step()
                if stop != nil { break }
                n += 1
            }
        }
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
