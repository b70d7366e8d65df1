/// The interpreter as the `InstructionAssist` of a hardware backend: it finishes one instruction
/// KVM's emulator refused (INT n, INT3, INTO, BOUND, IRET on PVM hosts), running exactly that
/// instruction on the vCPU's state and guest memory, including delivering any exception it raises
/// through the guest's IDT; and it delivers external interrupts and NMIs through the guest's IDT
/// on a vCPU state.
///
/// One interpreter is kept across calls (its decode cache validates every hit against memory, so
/// it is never stale). Each call starts it from the state it is given, with no interrupt shadow
/// of its own: the caller's `inhibited` is the one that counts.
public final class InterpreterAssist: InstructionAssist {
    private var interpreter: Interpreter?
    /// Where the runtime's IDT stubs lie (linear = physical: the runtime is identity-mapped).
    private let stubs: Range<UInt32>?

    /// Instructions of a runtime stub (`push 0`, `pushal`, `out`) run after the refused one.
    static let stubInstructionLimit = 8

    public init() {
        if let l = try? RuntimeImage.layout() {
            stubs = l.stubBase..<(l.stubBase &+ l.stubSize &* UInt32(l.vectorCount))
        } else {
            stubs = nil
        }
    }

    /// The kept interpreter (made on first use, or again for other memory) set to `state`.
    private func interpreter(for memory: GuestMemory, state: CPUState) -> Interpreter {
        let interpreter: Interpreter
        if let existing = self.interpreter, existing.memory === memory {
            interpreter = existing
            interpreter.state = state
        } else {
            interpreter = Interpreter(memory: memory, state: state)
            self.interpreter = interpreter
        }
        interpreter.interruptsInhibited = false
        return interpreter
    }

    /// Delivers `vector` on `state` unless the guest cannot take it now: `.notAccepted` when
    /// `inhibited` (the shadow of the instruction the vCPU just completed) or EFLAGS.IF = 0,
    /// except for an NMI (vector 02h), which ignores both. `state` changes only when delivered.
    public func deliverInterrupt(vector: UInt8, state: inout CPUState, memory: GuestMemory, inhibited: Bool) -> InterruptDelivery {
        if vector != 0x02 && (inhibited || state.eflags & EFlags.if == 0) { return .notAccepted }
        let interpreter = interpreter(for: memory, state: state)
        let delivery = InterpreterBackend.delivery(interpreter.deliverExternalInterrupt(vector: vector), vector: vector)
        if delivery == .delivered { state = interpreter.state }
        return delivery
    }

    /// Runs the instruction at `state.eip`. When it was INT n (or INT3, INTO, BOUND) delivered
    /// into one of the runtime's own stubs, the stub runs to its OUT here too (the fast path:
    /// handing it back to KVM would cost a second exit, about 10 µs on a PVM host, for three
    /// instructions).
    public func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome {
        let interpreter = interpreter(for: memory, state: state)
        var stop = interpreter.step()
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
