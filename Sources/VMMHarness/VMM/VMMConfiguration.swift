/// The version Get_VMM_Version reports: AH = major, AL = minor (`DDK_VERSION`), ECX = debug revision.
public struct VMMVersion: Equatable, Hashable, Sendable, Codable {
    public var major: UInt8
    public var minor: UInt8
    /// ECX: the debug development revision (0 for a retail VMM).
    public var debugRevision: UInt32
    public init(major: UInt8, minor: UInt8, debugRevision: UInt32 = 0) {
        self.major = major; self.minor = minor; self.debugRevision = debugRevision
    }
    /// 4.00 (0400h), Windows 95.
    public static let windows95 = VMMVersion(major: 4, minor: 0x00)
    /// 4.10 (040Ah), Windows 98. The harness's default.
    public static let windows98 = VMMVersion(major: 4, minor: 0x0A)
}

/// How a `VirtualMachineManager` is set up.
public struct VMMConfiguration {
    /// What Get_VMM_Version returns (default 040Ah, Windows 98).
    public var version: VMMVersion = .windows98
    /// The system VM's handle (also the current VM: the harness runs one VM).
    public var systemVM: VMHandle = VMMHostArea.systemVMHandle
    /// Which vectors get a VMM handler at boot and what those do (default: pass everything on).
    public var ownFaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// The same for the VMM's own Hook_PM_Fault handlers (protected-mode application faults).
    public var ownPMFaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// The same for the VMM's own Hook_V86_Fault handlers (virtual-8086 faults).
    public var ownV86FaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// Strict mode. When true, a register-rule violation ends dispatch with
    /// `FaultDispatchError.registerViolation` (`NMIDispatchError`/`IRQDispatchError` likewise), and a
    /// service called from an NMI handler ends `dispatchNMI` with `.serviceCallFromNMIHandler`;
    /// otherwise both are recorded in the trace and `diagnostics` and dispatch goes on.
    public var strictRegisterRules = false
    /// Guest addresses of "the VMM's own code", named `VMM(01)` in fatal-exception reports.
    public var vmmCodeRange: Range<UInt32>? = nil
    /// The service table (default `VMMServiceTable.standard`).
    public var services: VMMServiceTable = .standard

    public init() {}
}

/// Where the VMM is in its life.
public enum VMMPhase: String, Sendable, Codable {
    case notBooted = "not booted"
    case sysCriticalInit = "Sys_Critical_Init"
    case deviceInit = "Device_Init"
    case initComplete = "Init_Complete"
    case sysVMInit = "Sys_VM_Init"
    case running
    case shuttingDown = "shutting down"
    case shutDown = "shut down"
    case failed
}
