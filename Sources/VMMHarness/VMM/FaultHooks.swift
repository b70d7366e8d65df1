/// Which of the three fault-hook chains a hook or a fault belongs to: the mode the fault came from.
/// Each kind has its own chain per vector (00h–4Fh except 02h).
public enum FaultChainKind: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Faults in the VMM or a virtual device (ring 0): Hook_VMM_Fault (0081h) / Unhook_VMM_Fault (011Bh).
    case vmm = "VMM"
    /// Faults in protected-mode applications (ring 3): Hook_PM_Fault (0080h) / Unhook_PM_Fault (011Ah).
    case pm = "PM"
    /// Faults in virtual-8086 mode: Hook_V86_Fault (007Fh) / Unhook_V86_Fault (0119h).
    case v86 = "V86"
    public var description: String { rawValue }
}

/// Where a hook sits in a fault chain, by when it was made (the DDK's three groups). A fault visits
/// `.postCriticalInit` hooks first (newest first), then `.vmm`, then `.criticalInit`.
public enum FaultHookTier: String, Sendable, Codable, CustomStringConvertible {
    /// Hooked after the VMM installed its own handlers (Device_Init and later).
    case postCriticalInit = "post-critical-init"
    /// The VMM's own handler.
    case vmm
    /// Hooked before the VMM installed its own handlers: during Sys_Critical_Init (or before boot).
    case criticalInit = "critical-init"
    public var description: String { rawValue }
}

/// What a fault handler did.
public enum FaultDisposition: String, Sendable, Codable, CustomStringConvertible {
    /// Handled: returned with a near `ret`; the walk stops.
    case processed
    /// Not handled: jumped to the previous handler with all registers as on entry.
    case passedOn = "passed on"
    public var description: String { rawValue }
}

/// What the VMM hands a Swift fault handler besides registers and frame.
public struct FaultHandlerContext {
    /// The fault's vector.
    public var vector: UInt8
    /// This handler's own address.
    public var address: FaultHandlerAddress
    /// The handler this one was given as previous when it hooked (nil = none): where "pass on" goes.
    public var previous: FaultHandlerAddress?
    /// The VMM, for calling services (only asynchronous ones, unless inside
    /// Begin_Reentrant_Execution/End_Reentrant_Execution).
    public var vmm: VirtualMachineManager
}

/// A fault handler written in Swift (the DDK's `FaultProc`). It gets the registers of
/// `call [FaultProc]` (EBX = VM, EBP = frame address, IF clear) and the frame, and says whether it
/// processed the fault or passes it on. Rules: when processing it may change EAX, EBX, ECX, EDX,
/// ESI, EDI, the arithmetic flags and the frame; when passing on, every register must be as received.
/// A handler that throws (a Swift bug, not a DDK outcome) ends the dispatch with
/// `FaultDispatchError.handlerThrew`, naming the handler; the run ends with a handler error.
public typealias FaultProc = (_ registers: inout HandlerRegisters, _ frame: inout ClientRegisters,
                              _ context: FaultHandlerContext) throws -> FaultDisposition

/// What a chain entry is made of.
public enum FaultHandlerKind {
    /// A Swift handler.
    case host(FaultProc)
    /// One of the VMM's own handlers (installed after Sys_Critical_Init; see `VMMOwnFaultPolicy`).
    case vmmDefault
    /// Guest code at this address, entered through `GuestFaultCallout`.
    case guest(FaultHandlerAddress)

    /// "host", "vmm" or "guest".
    public var label: String {
        switch self {
        case .host: return "host"
        case .vmmDefault: return "vmm"
        case .guest: return "guest"
        }
    }
}

/// Why Hook_VMM_Fault / Hook_PM_Fault / Hook_V86_Fault, their Unhook_* services or
/// Get_Fault_Hook_Addrs refused (carry set).
public enum FaultHookError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The interrupt number is 02h (NMI) or above 4Fh (any 32-bit EAX). Nothing was installed.
    case invalidFaultNumber(UInt32)
    /// Unhook_*_Fault: no hook for this handler on this vector in that chain.
    case notHooked(interrupt: UInt32, handler: FaultHandlerAddress)
    /// Harness refusal: ESI = 0 would make "previous = 0" ambiguous.
    case nullHandler
    /// No handler slot left in the host area.
    case hostAreaExhausted

    public var description: String {
        switch self {
        case let .invalidFaultNumber(n):
            return "fault number \(vmmHex(n, 2))h is not valid (02h and numbers above 4Fh are refused)"
        case let .notHooked(i, h):
            return "handler \(h) is not hooked on fault \(vmmHex(i, 2))h"
        case .nullHandler:
            return "handler address 0 is refused"
        case .hostAreaExhausted:
            return "no host-area slot left for another handler"
        }
    }
}

/// One entry of a fault chain as the VMM reports it (newest first).
public struct FaultChainEntry: Equatable, Sendable, Codable, CustomStringConvertible {
    public var address: FaultHandlerAddress
    public var name: String
    public var tier: FaultHookTier
    /// "host", "vmm" or "guest".
    public var kind: String
    /// The previous handler this hook was given (and now passes on to), nil = none.
    public var previous: FaultHandlerAddress?
    /// The device that was being sent a control message when the hook was made, if any.
    public var owner: String?
    public var description: String {
        "\(address) \(name) [\(tier)] -> \(previous.map(\.description) ?? "none")"
    }
}

/// How the VMM's own fault handlers behave. By default every one passes the fault on (so a fault
/// nobody below processes is fatal); scenarios can make them process some vectors.
public struct VMMOwnFaultPolicy {
    /// The vectors that get a VMM handler at boot (02h is always left out).
    public var vectors: [UInt8]
    /// Decides per fault: return true to process (the frame may be adjusted, e.g. EIP advanced).
    public var action: (_ vector: UInt8, _ frame: inout ClientRegisters) -> Bool

    public init(vectors: [UInt8] = VMMOwnFaultPolicy.allVectors,
                action: @escaping (_ vector: UInt8, _ frame: inout ClientRegisters) -> Bool) {
        self.vectors = vectors.filter { $0 != 0x02 && $0 <= 0x4F }
        self.action = action
    }

    /// 00h–4Fh except 02h.
    public static var allVectors: [UInt8] { (0x00...0x4F).filter { $0 != 0x02 } }
    /// The processor exceptions 00h–1Fh except 02h.
    public static var exceptionVectors: [UInt8] { (0x00...0x1F).filter { $0 != 0x02 } }

    /// Every VMM handler passes on (the default).
    public static var passOnEverything: VMMOwnFaultPolicy { VMMOwnFaultPolicy { _, _ in false } }

    /// The VMM handlers process `processed` (leaving the frame unchanged) and pass on the rest.
    public static func processing(_ processed: Set<UInt8>) -> VMMOwnFaultPolicy {
        VMMOwnFaultPolicy { v, _ in processed.contains(v) }
    }
}

/// A call into a guest fault handler, for `GuestFaultCallout`.
public struct GuestFaultHandlerCall: Equatable, Sendable {
    public var vector: UInt8
    /// Where to enter (`call [FaultProc]`).
    public var handler: FaultHandlerAddress
    /// The previous handler recorded for this hook; reaching this address means "passed on".
    /// nil: the handler has no previous, so any return counts as processed.
    public var previous: FaultHandlerAddress?
    /// Entry registers: EBX = VM handle, EBP = frame address, IF clear.
    public var registers: HandlerRegisters
    /// Guest address of the frame.
    public var frameAddress: UInt32
    /// What the handler is: a fault handler of one chain, an NMI handler, an NMI event procedure or
    /// a virtualized IRQ's handler. The machine runs them all the same way; see `GuestHandlerRole`.
    public var role: GuestHandlerRole = .fault(.vmm)
}

/// What kind of guest procedure a `GuestFaultHandlerCall` enters. All are entered with
/// `call` and interrupts disabled; they differ in how they end.
public enum GuestHandlerRole: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// A FaultProc of the given chain: near `ret` = processed, jump to `previous` = passed on.
    case fault(FaultChainKind)
    /// An NMI handler (Set_NMI_Handler_Addr): it must jump to `previous` (= passed on); a near `ret`
    /// (reported as `.processed`) ends the NMI chain early, which the VMM reports. It must not `iret`.
    case nmiHandler
    /// A Hook_NMI_Event procedure: returns with a near `ret`; `previous` is nil.
    case nmiEvent
    /// A virtualized IRQ's hardware-interrupt procedure (VPICD's VID_Hw_Int_Proc) for IRQ n:
    /// returns with a near `ret`, CF clear = processed, CF set = not processed; `previous` is nil.
    case irq(UInt8)

    public var description: String {
        switch self {
        case let .fault(c): return "\(c) fault handler"
        case .nmiHandler: return "NMI handler"
        case .nmiEvent: return "NMI event procedure"
        case let .irq(n): return "IRQ \(n) handler"
        }
    }
}

/// What a guest fault handler did.
public struct GuestFaultHandlerReturn: Equatable, Sendable {
    /// `.processed` when it returned (near `ret`), `.passedOn` when it jumped to `previous`.
    public var disposition: FaultDisposition
    /// The registers at that point.
    public var registers: HandlerRegisters
    public init(disposition: FaultDisposition, registers: HandlerRegisters) {
        self.disposition = disposition; self.registers = registers
    }
}

/// Runs guest fault handlers for the VMM (implemented by the machine, mocked in tests). The guest
/// handler is entered with `call.registers` and interrupts disabled; it may modify the frame in
/// guest memory, which the implementation reads back into `frame`.
public protocol GuestFaultCallout: AnyObject {
    func callGuestFaultHandler(_ call: GuestFaultHandlerCall, frame: inout ClientRegisters) throws(HarnessError)
        -> GuestFaultHandlerReturn
    /// Unhook_VMM_Fault relinked a guest hook: its stored previous pointer must now be `newPrevious`
    /// (the HOOK_PROC convention lets the VMM rewrite it). Default: nothing.
    func guestHookRelinked(handler: FaultHandlerAddress, vector: UInt8, newPrevious: FaultHandlerAddress?)
    /// Unhook_VMM_Fault, Unhook_PM_Fault or Unhook_V86_Fault relinked a guest hook in `chain`.
    /// Default: calls `guestHookRelinked(handler:vector:newPrevious:)`.
    func guestHookRelinked(chain: FaultChainKind, handler: FaultHandlerAddress, vector: UInt8,
                           newPrevious: FaultHandlerAddress?)
    /// Calls a guest procedure that is not a fault handler (a guest device's control procedure)
    /// as `call entry`: EAX and EBX as given, ECX, EDX, ESI and EDI zero, IF and CF clear, on the
    /// current stack. Returns the registers at its near RET. Default: unsupported.
    func callGuestProcedure(_ entry: UInt32, eax: UInt32, ebx: UInt32, purpose: String) throws(HarnessError)
        -> HandlerRegisters
    /// A guest procedure called outside a fault failed (`message`): the run ends as a handler
    /// error unless it has ended already. Default: nothing.
    func guestProcedureFailed(_ message: String)
}

extension GuestFaultCallout {
    public func callGuestProcedure(_ entry: UInt32, eax: UInt32, ebx: UInt32, purpose: String) throws(HarnessError)
        -> HandlerRegisters
    {
        throw .unsupported("this guest callout runs no guest procedures (\(purpose))")
    }
    public func guestProcedureFailed(_ message: String) {}
    public func guestHookRelinked(handler: FaultHandlerAddress, vector: UInt8, newPrevious: FaultHandlerAddress?) {}
    public func guestHookRelinked(chain: FaultChainKind, handler: FaultHandlerAddress, vector: UInt8,
                                  newPrevious: FaultHandlerAddress?) {
        guestHookRelinked(handler: handler, vector: vector, newPrevious: newPrevious)
    }
}
