/// How the machine reaches the interpreter (filled in by Interpreter/InterpreterBackend.swift).
extension Harness {
    static var interpreterFactory: InterpreterFactory? { nil }
    static var assistFactory: (@Sendable () -> any InstructionAssist)? { nil }
}
