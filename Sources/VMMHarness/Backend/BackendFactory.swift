/// The one place that builds concrete backends: everything above the backend layer asks for a
/// `BackendKind` and gets an `any ExecutionBackend`.
public enum Backends {
    /// Makes a backend of `kind` over `memory`, starting from `initialState`. A KVM backend gets
    /// `assist` (default: the interpreter) to finish what its emulator refuses and to deliver
    /// interrupts through the guest's IDT.
    public static func make(_ kind: BackendKind, memory: GuestMemory, initialState: CPUState,
                            options: BackendOptions = BackendOptions(),
                            assist: (any InstructionAssist)? = Backends.interpreterAssist()) throws(HarnessError)
        -> any ExecutionBackend
    {
        switch kind {
        case .interpreter:
            return InterpreterBackend(memory: memory, state: initialState)
        case .kvm:
            let backend = try KVMBackend(memory: memory, options: options, assist: assist)
            try backend.writeState(initialState)
            return backend
        }
    }

    /// The interpreter as an instruction assist for KVM.
    public static func interpreterAssist() -> any InstructionAssist {
        InterpreterAssist()
    }
}
