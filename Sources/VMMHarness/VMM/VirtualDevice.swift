/// System control messages sent to a device's control procedure (DDK `System_Control`, EAX values).
public enum ControlMessage: UInt32, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case sysCriticalInit = 0x00
    case deviceInit = 0x01
    case initComplete = 0x02
    case sysVMInit = 0x03
    case sysVMTerminate = 0x04
    case systemExit = 0x05
    case sysCriticalExit = 0x06
    case createVM = 0x07
    case vmCriticalInit = 0x08
    case vmInit = 0x09
    case vmTerminate = 0x0A
    case vmNotExecuteable = 0x0B
    case destroyVM = 0x0C
    case sysDynamicDeviceInit = 0x1B
    case sysDynamicDeviceExit = 0x1C

    /// The DDK name (`Sys_Critical_Init`).
    public var name: String {
        switch self {
        case .sysCriticalInit: return "Sys_Critical_Init"
        case .deviceInit: return "Device_Init"
        case .initComplete: return "Init_Complete"
        case .sysVMInit: return "Sys_VM_Init"
        case .sysVMTerminate: return "Sys_VM_Terminate"
        case .systemExit: return "System_Exit"
        case .sysCriticalExit: return "Sys_Critical_Exit"
        case .createVM: return "Create_VM"
        case .vmCriticalInit: return "VM_Critical_Init"
        case .vmInit: return "VM_Init"
        case .vmTerminate: return "VM_Terminate"
        case .vmNotExecuteable: return "VM_Not_Executeable"
        case .destroyVM: return "Destroy_VM"
        case .sysDynamicDeviceInit: return "Sys_Dynamic_Device_Init"
        case .sysDynamicDeviceExit: return "Sys_Dynamic_Device_Exit"
        }
    }
    public var description: String { name }
}

/// A virtual device (VxD) as the VMM sees it: the parts of its Device Descriptor Block
/// (`Declare_Virtual_Device`) the harness uses, and its control procedure.
public protocol VirtualDevice: AnyObject {
    /// `DDB_Name`: at most 8 characters (ASCII, space padded in the DDB).
    var name: String { get }
    /// `DDB_Req_Device_Number` (0 = `Undefined_Device_ID`; 0001h is the VMM's).
    var deviceID: UInt16 { get }
    /// `DDB_Init_Order`: devices get messages in ascending order (ties: registration order).
    var initOrder: UInt32 { get }
    /// Guest addresses of the device's code, `[start, end)`, for the fatal-exception report.
    var codeRange: Range<UInt32>? { get }
    /// `DDB_Control_Proc`. Returns false for "carry set" (failure). During `Sys_Critical_Init`
    /// `vmm.interruptsEnabled` is false.
    func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool
}

extension VirtualDevice {
    public var codeRange: Range<UInt32>? { nil }
}

/// Why a device could not be registered.
public enum DeviceRegistrationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The name is empty, longer than 8 characters or not printable ASCII.
    case invalidName(String)
    /// Another device (or the VMM, 0001h) already has this id.
    case duplicateDeviceID(UInt16, existing: String)
    /// Devices are registered before `boot()`.
    case alreadyBooted(String)

    public var description: String {
        switch self {
        case let .invalidName(n): return "device name \"\(n)\" must be 1 to 8 printable ASCII characters"
        case let .duplicateDeviceID(id, e): return "device id \(vmmHex(id, 4))h is already used by \(e)"
        case let .alreadyBooted(n): return "cannot register \(n): the VMM has already booted"
        }
    }
}

/// One step of boot or shutdown.
public struct BootEvent: Equatable, Sendable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        /// A control message was sent (`succeeded` = carry clear).
        case controlMessage = "control"
        /// The VMM installed its own fault handlers.
        case vmmHandlersInstalled = "vmm-handlers"
        /// A device failed and was dropped; its hooks were unhooked (`detail` lists them).
        case deviceUnloaded = "unloaded"
    }
    public var kind: Kind
    public var device: String?
    public var message: ControlMessage?
    public var succeeded: Bool
    /// Whether interrupts were enabled while the message ran.
    public var interruptsEnabled: Bool
    public var detail: String

    public var description: String {
        switch kind {
        case .controlMessage:
            return "\(message?.name ?? "?") -> \(device ?? "?"): \(succeeded ? "ok" : "failed (carry set)")"
                + (interruptsEnabled ? "" : " [interrupts disabled]")
        case .vmmHandlersInstalled, .deviceUnloaded:
            return (device.map { "\($0): " } ?? "") + detail
        }
    }
}

/// Why boot failed as a whole.
public enum BootError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A device failed Sys_VM_Init: Windows exits.
    case sysVMInitFailed(device: String)
    /// `boot()` was called twice.
    case alreadyBooted

    public var description: String {
        switch self {
        case let .sysVMInitFailed(d): return "\(d) failed Sys_VM_Init; the system cannot start"
        case .alreadyBooted: return "the VMM has already booted"
        }
    }
}
