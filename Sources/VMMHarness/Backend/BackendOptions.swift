#if canImport(Glibc)
import Glibc
#endif

/// How backends are made: the settings a caller (the CLI, a test, an embedding program) passes
/// down. The library itself reads no environment variable; `init(environment:)` is for callers
/// that want the CLI's variables.
public struct BackendOptions: Sendable, Equatable {
    /// The KVM device (default `/dev/kvm`).
    public var kvmDevicePath: String
    /// Move registers through kvm_run's sync-regs area when the host offers it (false: always the
    /// KVM_GET/SET_REGS and _SREGS ioctls).
    public var kvmSyncRegisters: Bool
    /// The signal that kicks a vCPU thread out of KVM_RUN. The harness installs a handler for it
    /// while a KVM vCPU exists and restores the previous one afterwards. The thread that runs the
    /// vCPU may block it: KVM_RUN runs with it unblocked (KVM_SET_SIGNAL_MASK).
    public var kickSignal: Int32

    public init(kvmDevicePath: String = "/dev/kvm", kvmSyncRegisters: Bool = true, kickSignal: Int32 = SIGUSR2) {
        self.kvmDevicePath = kvmDevicePath
        self.kvmSyncRegisters = kvmSyncRegisters
        self.kickSignal = kickSignal
    }

    /// The options the CLI's environment variables select: `VMM_HARNESS_KVM_DEVICE` (the device
    /// path; tests point it nowhere to simulate a host without KVM) and `VMM_HARNESS_NO_SYNC_REGS`
    /// (set: registers through ioctls).
    public init(environment: [String: String]) {
        self.init(kvmDevicePath: environment["VMM_HARNESS_KVM_DEVICE"] ?? "/dev/kvm",
                  kvmSyncRegisters: environment["VMM_HARNESS_NO_SYNC_REGS"] == nil)
    }
}
