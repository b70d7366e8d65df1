/// A service called while the VMM was handling a fault (or any time, in the VMM's log).
public struct ServiceCallRecord: Equatable, Sendable, Codable, CustomStringConvertible {
    public var name: String
    public var ordinal: UInt16
    public var isAsynchronous: Bool
    /// Get_VMM_Reenter_Count at the time of the call.
    public var reenterCount: UInt32
    /// Whether this was a synchronous service called with a reentrancy count above 0.
    public var violatesAsyncRule: Bool { !isAsynchronous && reenterCount > 0 }
    public var description: String {
        "\(name) (\(vmmHex(ordinal, 4))h)" + (violatesAsyncRule ? " SYNCHRONOUS, reentrant" : "")
    }
}

/// Something the VMM reports without stopping, as the debug VMM printed it.
public enum VMMDiagnostic: Equatable, Sendable, Codable, CustomStringConvertible {
    /// A synchronous service was called with the reentrancy count above 0.
    case synchronousServiceFromFaultHandler(service: String, handler: String?)
    /// A fault handler broke the register rules (non-strict mode).
    case registerViolation(RegisterViolation)
    /// A service argument could not be read.
    case badServiceArgument(service: String, detail: String)
    /// End_Reentrant_Execution without a matching Begin_Reentrant_Execution.
    case unbalancedReentrantExecution
    /// A service (any service) was called from inside an NMI handler.
    case serviceCallFromNMIHandler(service: String, handler: String?)
    /// An NMI handler returned (near `ret`) instead of jumping to the previous NMI handler: the
    /// handlers before it in the chain, the VMM's default included, did not run.
    case nmiChainEndedEarly(handler: String, address: FaultHandlerAddress)
    /// A service was refused: wrong time or argument (Hook_NMI_Event after Init_Complete,
    /// Set_NMI_Handler_Addr with 0).
    case serviceRefused(service: String, reason: String)
    /// An IRQ was delivered that no device virtualized, or no IRQ was pending (spurious).
    case unhandledIRQ(String)

    public var description: String {
        switch self {
        case let .synchronousServiceFromFaultHandler(s, h):
            return "synchronous service \(s) called from a fault handler (reentrant)" + (h.map { " in \($0)" } ?? "")
        case let .registerViolation(v):
            return "register rule violated: \(v)"
        case let .badServiceArgument(s, d):
            return "\(s): \(d)"
        case .unbalancedReentrantExecution:
            return "End_Reentrant_Execution without Begin_Reentrant_Execution"
        case let .serviceCallFromNMIHandler(s, h):
            return "service \(s) called from an NMI handler (NMI handlers may call no service)" + (h.map { " in \($0)" } ?? "")
        case let .nmiChainEndedEarly(h, a):
            return "NMI handler \(h) at \(a) returned instead of jumping to the previous NMI handler"
        case let .serviceRefused(s, r):
            return "\(s) refused: \(r)"
        case let .unhandledIRQ(text):
            return text
        }
    }
}

/// One handler visited while dispatching a fault.
public struct FaultHandlerVisit: Equatable, Sendable, Codable, CustomStringConvertible {
    public var address: FaultHandlerAddress
    public var name: String
    public var tier: FaultHookTier
    /// "host", "vmm" or "guest".
    public var kind: String
    public var disposition: FaultDisposition
    /// Registers the handler left different from what it received.
    public var registerChanges: [ValueChange]
    /// Frame fields the handler changed (`Client_EIP`, ...).
    public var frameChanges: [ValueChange]
    public var violations: [RegisterViolation]
    /// Services it called (Swift services object or guest VMMcall).
    public var serviceCalls: [ServiceCallRecord]

    public var description: String {
        var s = "\(address) \(name) [\(tier), \(kind)] \(disposition)"
        let changes = registerChanges.map(\.description) + frameChanges.map(\.description)
        if !changes.isEmpty { s += ": " + changes.joined(separator: ", ") }
        for c in serviceCalls { s += "\n      calls \(c)" }
        for v in violations { s += "\n      ! \(v)" }
        return s
    }
}

/// Everything that happened for one fault. Codable for the JSON report; `description` for `--trace`.
public struct FaultDispatchTrace: Equatable, Sendable, Codable, CustomStringConvertible {
    public var vector: UInt8
    public var frameAddress: UInt32
    /// The frame as the fault left it.
    public var entryFrame: FrameSnapshot
    public var visits: [FaultHandlerVisit]
    /// One line: processed by whom, unhandled, terminated or an error.
    public var outcome: String
    /// Which chain ran (VMM, PM or V86).
    public var chain: FaultChainKind = .vmm

    public var description: String {
        let f = entryFrame.fields
        var s = (chain == .vmm ? "" : "\(chain.rawValue) ") + "fault \(vmmHex(vector, 2))h at \(vmmHex(f["Client_CS"] ?? 0, 4)):\(vmmHex(f["Client_EIP"] ?? 0, 8))"
            + " error \(vmmHex(f["Client_Error"] ?? 0, 4)) frame \(vmmHex(frameAddress, 8))"
        for (i, v) in visits.enumerated() { s += "\n  \(i + 1). \(v)" }
        s += "\n  => \(outcome)"
        return s
    }
}

/// The Windows "fatal exception" blue screen for a ring-0 fault nobody processed.
///
/// Text: `A fatal exception 0D has occurred at 0028:C0013F7A in VxD NAME(01) + 00012F7A.` — vector
/// as two hex digits, CS:EIP as 4:8 hex digits, then the device whose `codeRange` contains EIP (its
/// name, its id as two or more hex digits, the offset from the range start as 8 digits). When no
/// device claims EIP the " in VxD ..." part is left out; the VMM itself is named (`VMM(01)`) when
/// EIP lies in `VMMConfiguration.vmmCodeRange`.
public struct FatalExceptionReport: Equatable, Sendable, Codable, CustomStringConvertible, Error {
    public var vector: UInt8
    public var cs: UInt16
    public var eip: UInt32
    public var errorCode: UInt32
    /// The device whose code contains EIP, if any.
    public var deviceName: String?
    public var deviceID: UInt16?
    public var offset: UInt32?
    /// The full frame at the time of the report.
    public var frame: FrameSnapshot
    /// The Windows text.
    public var message: String
    /// The chain that left the fault unprocessed: `.vmm` for the ring-0 "fatal exception",
    /// `.pm`/`.v86` for an application's exception.
    public var chain: FaultChainKind = .vmm

    /// The report for a fault no handler of a PM or V86 chain processed (an application's fault,
    /// which Windows reported without the word "fatal" and without a device):
    /// - `.pm`: `An exception 0D has occurred at 001B:00401234 in a protected-mode application.`
    ///   (CS:EIP as 4:8 hex digits)
    /// - `.v86`: `An exception 0D has occurred at 1234:0056 in V86 mode.` (CS:IP as 4:4 hex digits,
    ///   the low word of EIP, as real-mode addresses are written)
    /// - `.vmm`: the same text as `init(vector:frame:device:)` with no device.
    public init(vector: UInt8, frame: ClientRegisters, chain: FaultChainKind) {
        self.init(vector: vector, frame: frame, device: nil)
        self.chain = chain
        switch chain {
        case .vmm:
            break
        case .pm:
            message = "An exception \(vmmHex(vector, 2)) has occurred at \(vmmHex(frame.cs, 4)):\(vmmHex(frame.eip, 8))"
                + " in a protected-mode application."
        case .v86:
            message = "An exception \(vmmHex(vector, 2)) has occurred at \(vmmHex(frame.cs, 4)):"
                + "\(vmmHex(frame.eip & 0xFFFF, 4)) in V86 mode."
        }
    }

    public init(vector: UInt8, frame: ClientRegisters, device: (name: String, id: UInt16, start: UInt32)?) {
        self.vector = vector
        cs = frame.cs
        eip = frame.eip
        errorCode = frame.error
        self.frame = FrameSnapshot(frame)
        deviceName = device?.name
        deviceID = device?.id
        offset = device.map { frame.eip &- $0.start }
        var m = "A fatal exception \(vmmHex(vector, 2)) has occurred at \(vmmHex(frame.cs, 4)):\(vmmHex(frame.eip, 8))"
        if let d = device, let o = offset {
            // "(01)" is the VxD's object (segment) number in Windows' message; a device here has
            // one code object, so it is always 01.
            m += " in VxD \(d.name)(01) + \(vmmHex(o, 8))"
        }
        message = m + "."
    }

    public var description: String { message + "\n" + frame.description }
}

/// How a fault ended.
public enum FaultDispatchResult: Equatable, Sendable, Codable {
    /// A handler processed it; the faulting code resumes from the (possibly changed) frame.
    case processed(by: FaultHandlerAddress, name: String)
    /// Every handler passed it on: the run ends with the fatal-exception report.
    case unhandled(FatalExceptionReport)
    /// A handler called Fatal_Error_Handler.
    case terminated(FatalErrorReport)
}

/// The result of `dispatchFault`.
public struct FaultDispatchOutcome: Equatable, Sendable {
    public var result: FaultDispatchResult
    public var trace: FaultDispatchTrace
    /// The registers the last handler left (what the VMM's dispatcher gets back after `call`).
    public var registers: HandlerRegisters
}

/// Why dispatch stopped with an error instead of a result.
public enum FaultDispatchError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A dispatch that may not nest was asked for while a handler was running (an IRQ, an NMI),
    /// or faults nested beyond `VirtualMachineManager.maximumFaultNesting` (`activeVector` is
    /// the innermost one being dispatched).
    case reentrantDispatch(vector: UInt8, activeVector: UInt8)
    /// Faults inside fault handlers nested deeper than `VirtualMachineManager.maximumFaultNesting`:
    /// the vectors from the outermost fault in.
    case faultNestingTooDeep(vectors: [UInt8])
    /// Strict mode: a handler broke the register rules.
    case registerViolation(RegisterViolation, trace: FaultDispatchTrace)
    /// A guest handler is in the chain but the VMM has no `GuestFaultCallout`.
    case noGuestCallout(handler: FaultHandlerAddress, trace: FaultDispatchTrace)
    /// The guest callout failed.
    case guestCallout(HarnessError, handler: FaultHandlerAddress, trace: FaultDispatchTrace)
    /// A Swift handler threw an error (`message` is its description).
    case handlerThrew(name: String, handler: FaultHandlerAddress, message: String, trace: FaultDispatchTrace)

    public var description: String {
        switch self {
        case let .handlerThrew(name, h, message, _):
            return "fault handler \(name) at \(h) threw: \(message)"
        case let .reentrantDispatch(v, a):
            return "fault \(vmmHex(v, 2))h raised while dispatching fault \(vmmHex(a, 2))h (nested fault dispatch)"
        case let .faultNestingTooDeep(vectors):
            return "faults nested more than \(VirtualMachineManager.maximumFaultNesting) deep inside fault handlers: "
                + vectors.map { "\(vmmHex($0, 2))h" }.joined(separator: " > ")
        case let .registerViolation(v, _):
            return "register rule violated: \(v)"
        case let .noGuestCallout(h, _):
            return "guest fault handler \(h) cannot be called: no guest callout"
        case let .guestCallout(e, h, _):
            return "guest fault handler \(h): \(e)"
        }
    }
}
