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

/// What a KVM device offers, by capability name (`KVM_CAP_*` without the prefix).
public struct KVMDeviceCapabilities: Sendable, Equatable {
    /// The register sets kvm_run can sync (`KVM_CAP_SYNC_REGS`).
    public var syncRegisterSets: UInt32
    public var immediateExit: Bool
    public var userNMI: Bool

    /// The capabilities as a name → value table (for reports).
    public var table: [String: Int32] {
        ["SYNC_REGS": Int32(bitPattern: syncRegisterSets), "IMMEDIATE_EXIT": immediateExit ? 1 : 0, "USER_NMI": userNMI ? 1 : 0]
    }
}

extension Backends {
    /// Opens the KVM device at `path` (API version 12 checked) and reads its capabilities; the
    /// error keeps the errno (ENOENT, EACCES, ENODEV ...) for `KVMDiagnosis`.
    public static func openKVMDevice(path: String) throws(HarnessError) -> KVMDeviceCapabilities {
        let system = try KVMSystem(path: path)
        return KVMDeviceCapabilities(syncRegisterSets: system.syncRegisterSets, immediateExit: system.hasImmediateExit,
                                     userNMI: system.hasUserNMI)
    }
}
