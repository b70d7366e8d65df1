/// A fault handler broke the register rules of Hook_VMM_Fault.
///
/// Processing: EAX, EBX, ECX, EDX, ESI, EDI may change; EBP, ESP and the segment registers must be
/// as on entry; in EFLAGS the arithmetic flags (CF, PF, AF, ZF, SF, OF) may change, IF must stay
/// clear and every other bit must be unchanged. Passing on: every register must be exactly as received.
public struct RegisterViolation: Equatable, Sendable, Codable, CustomStringConvertible, Error {
    public var handlerName: String
    public var handlerAddress: FaultHandlerAddress
    public var register: String
    public var old: UInt32
    public var new: UInt32
    /// What the handler did when it broke the rule.
    public var disposition: FaultDisposition

    public var description: String {
        let verb = disposition == .processed ? "processing" : "passing on"
        return "\(handlerName) at \(handlerAddress) changed \(register) \(vmmHex(old, 8)) -> \(vmmHex(new, 8)) while \(verb) the fault"
    }
}

/// The register rules of Hook_VMM_Fault, applied to every handler the VMM runs: fault handlers
/// by what they did, NMI handlers likewise (passing on keeps every register), NMI events and IRQ
/// handlers by the processing rules whatever they answer.
enum RegisterRules {
    /// The flags a processing handler may change.
    static let arithmeticFlags = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.of
    /// The registers a processing handler may change.
    private static let mayChange: Set<String> = ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI"]

    /// The rules `after` breaks, one violation per register, in `HandlerRegisters.namedValues` order.
    static func check(before: HandlerRegisters, after: HandlerRegisters, disposition: FaultDisposition,
                      name: @autoclosure () -> String, address: FaultHandlerAddress) -> [RegisterViolation] {
        // Fast paths (no allocation): nothing changed, or only what a processing handler may change.
        if before == after { return [] }
        if disposition == .processed, before.ebp == after.ebp, before.esp == after.esp, before.cs == after.cs,
           before.ds == after.ds, before.es == after.es, before.fs == after.fs, before.gs == after.gs,
           before.ss == after.ss, (before.eflags ^ after.eflags) & ~arithmeticFlags == 0 {
            return []
        }
        let name = name()
        var out: [RegisterViolation] = []
        for change in ValueChange.diff(before.namedValues, after.namedValues) {
            let broken: Bool
            switch disposition {
            case .passedOn:
                broken = true
            case .processed:
                if change.name == "EFLAGS" {
                    broken = (change.old ^ change.new) & ~arithmeticFlags != 0
                } else {
                    broken = !mayChange.contains(change.name)
                }
            }
            if broken {
                out.append(RegisterViolation(handlerName: name, handlerAddress: address, register: change.name,
                                             old: change.old, new: change.new, disposition: disposition))
            }
        }
        return out
    }
}
