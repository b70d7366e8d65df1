/// Finishes, on the host, an instruction a KVM host's emulator refused, and delivers interrupts
/// for a backend that cannot inject them through the guest's IDT itself. The interpreter
/// implements it (`InterpreterAssist`); a backend that has one uses it internally, so the
/// machine above never sees the refused instruction.
public protocol InstructionAssist: AnyObject {
    /// Executes exactly one instruction at `state.eip` (delivering any exception it raises through
    /// the guest IDT) and returns what the instruction did at the end.
    func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome
    /// Delivers an external interrupt (or an NMI, vector 02h) on `vector` through the guest's IDT
    /// on `state`, as the CPU takes one. `inhibited` is the interrupt shadow of the instruction
    /// just completed; IF is checked here too, except for vector 02h.
    func deliverInterrupt(vector: UInt8, state: inout CPUState, memory: GuestMemory, inhibited: Bool) -> InterruptDelivery
}

/// What an assisted instruction ended with.
public enum AssistOutcome: Equatable, Sendable {
    /// The instruction completed; the guest continues from the new state.
    case completed
    /// The instruction (or the stub it entered) ended with an exit for the host.
    case exit(GuestExit)
    /// The assist could not run it (why).
    case failed(String)
}
