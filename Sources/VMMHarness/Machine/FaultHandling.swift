/// What the host's fault handling decided.
public enum FaultResolution: Sendable, Equatable {
    /// Resume the guest from the (possibly changed) frame.
    case resume(handledBy: String)
    /// Nothing processed the fault: the run ends (`report` is the text shown to the user).
    case unhandled(report: String)
    /// End the run for another reason (a fatal error service, a strict-mode violation ...).
    case stop(reason: ExitReason, message: String)
}

/// Whoever decides what a fault means: the VMM (`VMMFaultHandling`), or a plain closure in tests.
public protocol FaultHandling: AnyObject {
    /// Called once per fault. Change `frame` to change what the guest resumes with.
    /// `details` receives a structured record of what happened for the report (e.g. a dispatch trace).
    func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution
}

/// The virtual interrupt controller the machine asks about hardware interrupts (the VMM's
/// virtual PIC). The machine delivers a pending IRQ on its vector (50h + IRQ) when the guest's
/// EFLAGS.IF allows it, exactly as the CPU delivers an external interrupt through the IDT.
public protocol InterruptController: AnyObject {
    /// Records a request for `irq`; false (and a reason) if the controller refuses it.
    func raise(irq: UInt8) -> String?
    /// The vector of the highest-priority pending request, if any.
    var pendingVector: UInt8? { get }
}

/// Extra, handler-specific information attached to a fault record.
public struct FaultDetails: Sendable, Codable, Equatable {
    /// Whether the machine will keep this record (it lists `MachineOptions.maxRecordedFaults`
    /// faults). Handlers may skip building traces when it is false.
    public var wanted = true
    /// Human-readable lines (the `--trace` listing).
    public var trace: [String] = []
    /// The VMM's dispatch of this fault: each handler visited, its tier, processed or passed on,
    /// what it changed, rule violations and service calls.
    public var dispatch: FaultDispatchTrace?
    public init() {}
}

/// A `FaultHandling` built from a closure; returning false leaves the fault unhandled.
public final class ClosureFaultHandling: FaultHandling {
    let body: (FaultEvent, inout ClientRegisters) -> Bool
    public init(_ body: @escaping (FaultEvent, inout ClientRegisters) -> Bool) { self.body = body }
    public func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        if body(event, &frame) { return .resume(handledBy: "host closure") }
        return .unhandled(report: "unhandled exception \(hex(event.vector, width: 2)) at \(hex(event.frame.cs, width: 4, prefix: ""))" +
                          ":\(hex(event.frame.eip, prefix: ""))")
    }
}

/// Names of the x86 exception vectors (SDM vol. 3A, table 6-1).
public enum ExceptionNames {
    public static func name(_ v: UInt8) -> String {
        switch v {
        case 0x00: return "#DE"
        case 0x01: return "#DB"
        case 0x02: return "NMI"
        case 0x03: return "#BP"
        case 0x04: return "#OF"
        case 0x05: return "#BR"
        case 0x06: return "#UD"
        case 0x07: return "#NM"
        case 0x08: return "#DF"
        case 0x0A: return "#TS"
        case 0x0B: return "#NP"
        case 0x0C: return "#SS"
        case 0x0D: return "#GP"
        case 0x0E: return "#PF"
        case 0x10: return "#MF"
        case 0x11: return "#AC"
        case 0x12: return "#MC"
        case 0x13: return "#XM"
        case 0x20: return "INT 20h (VMMcall)"
        case 0x50...0x5F: return "IRQ \(v - 0x50)"
        default: return "INT \(hex(v, width: 2))"
        }
    }

    /// Whether the CPU pushes an error code for this vector when it raises it as an exception.
    public static func hasErrorCode(_ v: UInt8) -> Bool {
        v == 0x08 || (0x0A...0x0E).contains(v) || v == 0x11
    }
}
