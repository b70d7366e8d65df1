/// Which service a `VMMcall`/`VxDcall` names: the dword after `INT 20h` (high word = device id,
/// low word = service ordinal, bit 15 of the low word = `VMMjmp`/`VxDjmp`).
public struct VMMServiceID: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Device id (0001h = VMM, `VMM_Device_ID`).
    public var device: UInt16
    /// Service ordinal within the device (bit 15 removed).
    public var ordinal: UInt16
    /// Whether bit 15 was set (`VMMjmp`: the caller does not expect to get control back).
    public var isJump: Bool

    public init(device: UInt16 = VMMServiceTable.vmmDeviceID, ordinal: UInt16, isJump: Bool = false) {
        self.device = device
        self.ordinal = ordinal & 0x7FFF
        self.isJump = isJump || ordinal & 0x8000 != 0
    }

    /// Decodes the dword that follows `INT 20h`.
    public init(vmmcallOperand: UInt32) {
        let word = UInt16(truncatingIfNeeded: vmmcallOperand)
        self.init(device: UInt16(truncatingIfNeeded: vmmcallOperand >> 16), ordinal: word & 0x7FFF,
                  isJump: word & 0x8000 != 0)
    }

    /// The dword `VMMcall` (or `VMMjmp`) assembles after `INT 20h`.
    public var vmmcallOperand: UInt32 {
        UInt32(device) << 16 | UInt32(ordinal) | (isJump ? 0x8000 : 0)
    }

    public var description: String { "\(vmmHex(device, 4))h:\(vmmHex(ordinal, 4))h\(isJump ? " (jmp)" : "")" }
}

/// Ordinals of the VMM services the harness implements (DDK VMM.INC, device 0001h).
public enum VMMServiceOrdinal {
    public static let getVMMVersion: UInt16 = 0x0000
    public static let getCurVMHandle: UInt16 = 0x0001
    public static let testCurVMHandle: UInt16 = 0x0002
    public static let getSysVMHandle: UInt16 = 0x0003
    public static let getVMMReenterCount: UInt16 = 0x0006
    public static let beginReentrantExecution: UInt16 = 0x0007
    public static let endReentrantExecution: UInt16 = 0x0008
    public static let getNMIHandlerAddr: UInt16 = 0x0016
    public static let setNMIHandlerAddr: UInt16 = 0x0017
    public static let hookNMIEvent: UInt16 = 0x0018
    public static let getFaultHookAddrs: UInt16 = 0x007E
    public static let hookV86Fault: UInt16 = 0x007F
    public static let hookPMFault: UInt16 = 0x0080
    public static let hookVMMFault: UInt16 = 0x0081
    public static let fatalErrorHandler: UInt16 = 0x00BE
    public static let outDebugString: UInt16 = 0x00C2
    public static let outDebugChr: UInt16 = 0x00C3
    public static let unhookV86Fault: UInt16 = 0x0119
    public static let unhookPMFault: UInt16 = 0x011A
    public static let unhookVMMFault: UInt16 = 0x011B

    /// Hook_*_Fault's ordinal for `chain`.
    public static func hookFault(_ chain: FaultChainKind) -> UInt16 {
        switch chain {
        case .vmm: return hookVMMFault
        case .pm: return hookPMFault
        case .v86: return hookV86Fault
        }
    }

    /// Unhook_*_Fault's ordinal for `chain`.
    public static func unhookFault(_ chain: FaultChainKind) -> UInt16 {
        switch chain {
        case .vmm: return unhookVMMFault
        case .pm: return unhookPMFault
        case .v86: return unhookV86Fault
        }
    }
}

/// What a service call leads to.
public enum ServiceCallOutcome: Equatable, Sendable, Codable {
    /// The service returned; the caller continues with the result registers.
    case returned
    /// `Fatal_Error_Handler`: the run ends with this report (the service does not return).
    case terminate(FatalErrorReport)
}

/// Why a service call could not be made.
public enum VMMServiceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No service with this device id and ordinal (the debug VMM's "invalid VxD call").
    case unknownService(VMMServiceID)
    /// A service argument points outside guest memory.
    case badGuestPointer(service: String, MemoryAccessError)
    /// A service needs to read guest memory but the VMM has no `GuestStringReader`.
    case noGuestMemory(service: String)

    public var description: String {
        switch self {
        case let .unknownService(id):
            return "VMMcall to unknown service \(id) (device \(vmmHex(id.device, 4))h, ordinal \(vmmHex(id.ordinal, 4))h)"
        case let .badGuestPointer(service, e):
            return "\(service): \(e)"
        case let .noGuestMemory(service):
            return "\(service): no guest memory to read the argument from"
        }
    }
}

/// The end of a run through `Fatal_Error_Handler` (VMM 00BEh).
public struct FatalErrorReport: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The message ESI pointed at ("" when ESI was 0; a placeholder when it was unreadable).
    public var message: String
    /// ESI as given.
    public var messageAddress: UInt32
    /// EAX as given (`EF_Hang_On_Exit` etc.).
    public var flags: UInt32
    public init(message: String, messageAddress: UInt32, flags: UInt32) {
        self.message = message; self.messageAddress = messageAddress; self.flags = flags
    }
    public var description: String {
        "Fatal_Error_Handler: \(message.isEmpty ? "(no message)" : message) (flags \(vmmHex(flags, 8))h)"
    }
}

/// Reads guest memory for services that take pointers (`Out_Debug_String`, `Fatal_Error_Handler`).
public protocol GuestStringReader: AnyObject {
    /// One byte at a guest address.
    func readGuestByte(_ address: UInt32) throws(MemoryAccessError) -> UInt8
}

extension GuestMemory: GuestStringReader {
    public func readGuestByte(_ address: UInt32) throws(MemoryAccessError) -> UInt8 {
        try read8(address)
    }
}

/// One VMM service: its DDK name, ordinal, whether it may be called from a fault handler or
/// interrupt (asynchronous, KB Q75864), and its register-based implementation.
public struct VMMService: Sendable {
    /// Runs the service on `registers` (inputs on entry, results on return).
    public typealias Implementation = @Sendable (VirtualMachineManager, inout ServiceRegisters) throws(VMMServiceError)
        -> ServiceCallOutcome

    /// The DDK name (`Hook_VMM_Fault`).
    public var name: String
    /// The ordinal within device 0001h.
    public var ordinal: UInt16
    /// Whether the service is asynchronous (callable with a reentrancy count above 0).
    public var isAsynchronous: Bool
    /// The register contract in DDK terms, for reports and documentation.
    public var contract: String
    public var implementation: Implementation

    public init(name: String, ordinal: UInt16, isAsynchronous: Bool, contract: String,
                implementation: @escaping Implementation) {
        self.name = name; self.ordinal = ordinal; self.isAsynchronous = isAsynchronous
        self.contract = contract; self.implementation = implementation
    }
}

/// The VMM's service table, keyed by ordinal (device 0001h). The same table serves Swift callers
/// (`VirtualMachineManager.callService`) and guest `VMMcall`s.
public struct VMMServiceTable: Sendable {
    /// `VMM_Device_ID`.
    public static let vmmDeviceID: UInt16 = 0x0001

    public private(set) var services: [UInt16: VMMService] = [:]

    public init(_ services: [VMMService] = []) {
        for s in services { add(s) }
    }

    /// Adds or replaces a service.
    public mutating func add(_ service: VMMService) { services[service.ordinal] = service }

    public subscript(ordinal: UInt16) -> VMMService? { services[ordinal & 0x7FFF] }

    /// The service `id` names, or `.unknownService`.
    public func service(for id: VMMServiceID) throws(VMMServiceError) -> VMMService {
        guard id.device == Self.vmmDeviceID, let s = services[id.ordinal] else { throw .unknownService(id) }
        return s
    }

    /// Hook_VMM_Fault, Hook_PM_Fault or Hook_V86_Fault: the same contract, each on its own chains.
    static func hookService(_ chain: FaultChainKind) -> VMMService {
        VMMService(name: "Hook_\(chain.rawValue)_Fault", ordinal: VMMServiceOrdinal.hookFault(chain), isAsynchronous: false,
                   contract: "in: EAX = interrupt (not 02h, not above 4Fh), ESI = handler; out: CF clear and ESI = previous handler (0 if none), or CF set and nothing installed") { vmm, r in
            do {
                let previous = try vmm.hook(chain, interrupt: r.eax, address: FaultHandlerAddress(r.esi))
                r.esi = previous?.rawValue ?? 0
                r.carry = false
            } catch {
                r.carry = true
            }
            return .returned
        }
    }

    /// Unhook_VMM_Fault, Unhook_PM_Fault or Unhook_V86_Fault (VMM 4.0+).
    static func unhookService(_ chain: FaultChainKind) -> VMMService {
        VMMService(name: "Unhook_\(chain.rawValue)_Fault", ordinal: VMMServiceOrdinal.unhookFault(chain), isAsynchronous: false,
                   contract: "in: EAX = interrupt, ESI = handler; out: CF clear if removed, CF set if not found") { vmm, r in
            do {
                try vmm.unhook(chain, interrupt: r.eax, address: FaultHandlerAddress(r.esi))
                r.carry = false
            } catch {
                r.carry = true
            }
            return .returned
        }
    }

    /// The services the harness implements.
    public static let standard = VMMServiceTable([
        VMMService(name: "Get_NMI_Handler_Addr", ordinal: VMMServiceOrdinal.getNMIHandlerAddr, isAsynchronous: false,
                   contract: "out: ESI = current NMI handler (the VMM's default handler when none was set)") { vmm, r in
            r.esi = vmm.nmiCurrentHandler.rawValue
            return .returned
        },
        VMMService(name: "Set_NMI_Handler_Addr", ordinal: VMMServiceOrdinal.setNMIHandlerAddr, isAsynchronous: false,
                   contract: "in: ESI = new NMI handler (it must jump to the handler Get_NMI_Handler_Addr returned); harness: CF set and nothing changed when ESI = 0") { vmm, r in
            do {
                try vmm.setNMIHandler(FaultHandlerAddress(r.esi))
                r.carry = false
            } catch {
                r.carry = true
            }
            return .returned
        },
        VMMService(name: "Hook_NMI_Event", ordinal: VMMServiceOrdinal.hookNMIEvent, isAsynchronous: false,
                   contract: "in: ESI = event procedure (initialization only); harness: CF set and nothing installed after Init_Complete or when ESI = 0") { vmm, r in
            do {
                try vmm.addNMIEvent(FaultHandlerAddress(r.esi))
                r.carry = false
            } catch {
                r.carry = true
            }
            return .returned
        },
        VMMService(name: "Get_Fault_Hook_Addrs", ordinal: VMMServiceOrdinal.getFaultHookAddrs, isAsynchronous: false,
                   contract: "in: EAX = interrupt (not 02h, not above 4Fh); out: CF clear, EDX = V86 handler, ESI = PM handler, EDI = VMM handler (0 where none), or CF set") { vmm, r in
            do {
                let a = try vmm.faultHookAddresses(r.eax)
                r.edx = a.v86?.rawValue ?? 0
                r.esi = a.pm?.rawValue ?? 0
                r.edi = a.vmm?.rawValue ?? 0
                r.carry = false
            } catch {
                r.carry = true
            }
            return .returned
        },
        hookService(.v86),
        hookService(.pm),
        unhookService(.v86),
        unhookService(.pm),
        VMMService(name: "Get_VMM_Version", ordinal: VMMServiceOrdinal.getVMMVersion, isAsynchronous: true,
                   contract: "out: AH = major, AL = minor (040Ah = Windows 98), ECX = debug revision; CF clear") { vmm, r in
            let v = vmm.configuration.version
            r.eax = UInt32(v.major) << 8 | UInt32(v.minor)
            r.ecx = v.debugRevision
            r.carry = false
            return .returned
        },
        VMMService(name: "Get_Cur_VM_Handle", ordinal: VMMServiceOrdinal.getCurVMHandle, isAsynchronous: true,
                   contract: "out: EBX = current VM handle") { vmm, r in
            r.ebx = vmm.currentVM
            return .returned
        },
        VMMService(name: "Test_Cur_VM_Handle", ordinal: VMMServiceOrdinal.testCurVMHandle, isAsynchronous: true,
                   contract: "in: EBX = VM handle; out: ZF set if it is the current VM") { vmm, r in
            r.zero = r.ebx == vmm.currentVM
            return .returned
        },
        VMMService(name: "Get_Sys_VM_Handle", ordinal: VMMServiceOrdinal.getSysVMHandle, isAsynchronous: true,
                   contract: "out: EBX = system VM handle") { vmm, r in
            r.ebx = vmm.systemVM
            return .returned
        },
        VMMService(name: "Get_VMM_Reenter_Count", ordinal: VMMServiceOrdinal.getVMMReenterCount, isAsynchronous: true,
                   contract: "out: ECX = reentrancy count (0 outside interrupts and fault handlers)") { vmm, r in
            r.ecx = vmm.reenterCount
            return .returned
        },
        VMMService(name: "Begin_Reentrant_Execution", ordinal: VMMServiceOrdinal.beginReentrantExecution,
                   isAsynchronous: true,
                   contract: "out: ECX = old reentrancy count; the count becomes 0 so synchronous services may be called") { vmm, r in
            r.ecx = vmm.beginReentrant()
            return .returned
        },
        VMMService(name: "End_Reentrant_Execution", ordinal: VMMServiceOrdinal.endReentrantExecution,
                   isAsynchronous: true,
                   contract: "in: ECX = count returned by Begin_Reentrant_Execution; restores it") { vmm, r in
            vmm.endReentrant(r.ecx)
            return .returned
        },
        hookService(.vmm),
        unhookService(.vmm),
        VMMService(name: "Fatal_Error_Handler", ordinal: VMMServiceOrdinal.fatalErrorHandler, isAsynchronous: true,
                   contract: "in: ESI = message (NUL-terminated, 0 = none), EAX = exit flags; does not return") { vmm, r in
            .terminate(vmm.fatalError(messageAddress: r.esi, flags: r.eax))
        },
        VMMService(name: "Out_Debug_String", ordinal: VMMServiceOrdinal.outDebugString, isAsynchronous: true,
                   contract: "in: ESI = NUL-terminated string; appended to the debug log") { vmm, r throws(VMMServiceError) in
            let s = try vmm.readGuestString(r.esi, service: "Out_Debug_String")
            vmm.debugLog += s
            return .returned
        },
        VMMService(name: "Out_Debug_Chr", ordinal: VMMServiceOrdinal.outDebugChr, isAsynchronous: true,
                   contract: "in: AL = character; appended to the debug log") { vmm, r in
            vmm.debugLog.unicodeScalars.append(Unicode.Scalar(UInt8(truncatingIfNeeded: r.eax)))
            return .returned
        },
    ])
}
