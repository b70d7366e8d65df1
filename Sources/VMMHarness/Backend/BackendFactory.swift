/// The one place that builds concrete backends: everything above the backend layer asks for a
/// `BackendKind` and gets an `any ExecutionBackend`.
public enum Backends {
    /// Makes a backend of `kind` over `memory`, starting from `initialState`. A KVM backend gets
    /// the interpreter as its instruction assist.
    public static func make(_ kind: BackendKind, memory: GuestMemory, initialState: CPUState,
                            options: BackendOptions = BackendOptions()) throws(HarnessError) -> any ExecutionBackend {
        switch kind {
        case .interpreter:
            return InterpreterBackend(memory: memory, state: initialState)
        case .kvm:
            let backend = try KVMBackend(memory: memory, options: options, assist: InterpreterAssist())
            try backend.writeState(initialState)
            return backend
        }
    }
}
