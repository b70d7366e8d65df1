/// How the machine reaches the interpreter: as a backend, and as the instruction assist for KVM.
extension Harness {
    static var interpreterFactory: InterpreterFactory? {
        { memory, state in InterpreterBackend(memory: memory, state: state) }
    }

    static var assistFactory: (@Sendable () -> any InstructionAssist)? {
        { InterpreterAssist() }
    }
}
