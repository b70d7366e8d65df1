/// The minimal virtual PIC's numbering (VPICD's role): IRQ n (0–15) is delivered as vector 50h + n,
/// the range Hook_VMM_Fault, Hook_PM_Fault and Hook_V86_Fault refuse (they stop at 4Fh).
public enum VirtualPIC {
    /// The vector of IRQ 0.
    public static let baseVector: UInt8 = 0x50
    /// IRQs 0–15 (two cascaded 8259As).
    public static let irqCount: UInt8 = 16

    /// The vector for IRQ `irq` (50h + n), nil above 15.
    public static func vector(forIRQ irq: UInt8) -> UInt8? { irq < irqCount ? baseVector + irq : nil }

    /// The IRQ delivered on `vector`, nil outside 50h–5Fh.
    public static func irq(forVector vector: UInt8) -> UInt8? {
        vector >= baseVector && vector - baseVector < irqCount ? vector - baseVector : nil
    }

    /// Delivery priority, highest first, as on the AT's cascaded 8259As with fixed priority: IRQ 0,
    /// 1, then the slave's 8–15 (on the master's input 2, where IRQ 2 itself sits), then 3–7.
    public static let priorityOrder: [UInt8] = [0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15, 3, 4, 5, 6, 7]
}

/// A virtualized IRQ (VPICD_Virtualize_IRQ's result).
public struct VirtualIRQ: Equatable, Sendable, Codable, CustomStringConvertible {
    public var irq: UInt8
    /// The device or handler name, for traces.
    public var name: String
    /// The handler's address (`VID_Hw_Int_Proc`): a host-area slot for Swift handlers, or guest code.
    public var handler: FaultHandlerAddress
    /// "host" or "guest".
    public var kind: String
    /// The vector the IRQ arrives on (50h + n).
    public var vector: UInt8 { VirtualPIC.baseVector &+ irq }
    /// The IRQ handle passed in EAX to the handler. VPICD's handle is an opaque pointer; the
    /// harness uses the vector number (50h + n), which is never 0.
    public var handle: UInt32 { UInt32(vector) }
    public var description: String { "IRQ \(irq) (vector \(vmmHex(vector, 2))h) -> \(name) at \(handler) [\(kind)]" }
}

/// Why a virtual PIC request was refused.
public enum VirtualPICError: Error, Equatable, Sendable, CustomStringConvertible {
    /// IRQ numbers are 0–15.
    case irqOutOfRange(UInt8)
    /// VPICD_Virtualize_IRQ on an IRQ another device already virtualized.
    case alreadyVirtualized(irq: UInt8, by: String)
    /// VPICD_Force_Default_Behavior on an IRQ nobody virtualized.
    case notVirtualized(UInt8)
    /// Handler address 0.
    case nullHandler
    /// No handler slot left in the host area.
    case hostAreaExhausted

    public var description: String {
        switch self {
        case let .irqOutOfRange(n): return "IRQ \(n) is out of range (0–15)"
        case let .alreadyVirtualized(n, by): return "IRQ \(n) is already virtualized by \(by)"
        case let .notVirtualized(n): return "IRQ \(n) is not virtualized"
        case .nullHandler: return "handler address 0 is refused"
        case .hostAreaExhausted: return "no host-area slot left for another handler"
        }
    }
}

/// How an IRQ delivery ended.
public enum IRQDispatchResult: Equatable, Sendable, Codable {
    /// The virtualized handler processed it (returned with CF clear).
    case processed(irq: UInt8, by: FaultHandlerAddress, name: String)
    /// The handler returned with CF set (did not process it); reported.
    case notProcessed(irq: UInt8, by: FaultHandlerAddress, name: String)
    /// No device virtualized the IRQ; reported (the request is dropped).
    case unvirtualized(irq: UInt8)
    /// Nothing was pending (or the named IRQ was not): a spurious interrupt; reported.
    case spurious(irq: UInt8?)
}

/// What happened for one IRQ delivery.
public struct IRQDispatchTrace: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The IRQ delivered (nil for a spurious delivery with no IRQ named).
    public var irq: UInt8?
    public var frameAddress: UInt32
    public var entryFrame: FrameSnapshot
    /// The handler's visit, when a handler ran.
    public var visit: FaultHandlerVisit?
    public var outcome: String

    public var description: String {
        let f = entryFrame.fields
        let what = irq.map { "IRQ \($0) (vector \(vmmHex(VirtualPIC.baseVector &+ $0, 2))h)" } ?? "spurious IRQ"
        var s = "\(what) at \(vmmHex(f["Client_CS"] ?? 0, 4)):\(vmmHex(f["Client_EIP"] ?? 0, 8)) frame \(vmmHex(frameAddress, 8))"
        if let v = visit { s += "\n  1. \(v)" }
        s += "\n  => \(outcome)"
        return s
    }
}

/// The result of `dispatchIRQ`.
public struct IRQDispatchOutcome: Equatable, Sendable {
    public var result: IRQDispatchResult
    public var trace: IRQDispatchTrace
    /// The registers the handler left (the entry registers when none ran).
    public var registers: HandlerRegisters
}

/// Why `dispatchIRQ` stopped with an error instead of a result.
public enum IRQDispatchError: Error, Equatable, Sendable, CustomStringConvertible {
    /// IRQ numbers are 0–15.
    case irqOutOfRange(UInt8)
    /// An IRQ was delivered while a fault, NMI or IRQ handler ran (they run with interrupts disabled).
    case reentrantDispatch(irq: UInt8?, activeVector: UInt8)
    /// Strict mode: the handler broke the register rules.
    case registerViolation(RegisterViolation, trace: IRQDispatchTrace)
    /// A guest handler is virtualized but the VMM has no `GuestFaultCallout`.
    case noGuestCallout(handler: FaultHandlerAddress, trace: IRQDispatchTrace)
    /// The guest callout failed.
    case guestCallout(HarnessError, handler: FaultHandlerAddress, trace: IRQDispatchTrace)
    /// A Swift IRQ handler threw.
    case handlerThrew(irq: UInt8, name: String, message: String)

    public var description: String {
        switch self {
        case let .irqOutOfRange(n): return "IRQ \(n) is out of range (0–15)"
        case let .handlerThrew(irq, name, message): return "IRQ \(irq) handler \(name) threw: \(message)"
        case let .reentrantDispatch(irq, a):
            return "IRQ \(irq.map(String.init) ?? "?") delivered while handling vector \(vmmHex(a, 2))h (interrupts are disabled there)"
        case let .registerViolation(v, _): return "register rule violated: \(v)"
        case let .noGuestCallout(h, _): return "guest IRQ handler \(h) cannot be called: no guest callout"
        case let .guestCallout(e, h, _): return "guest IRQ handler \(h): \(e)"
        }
    }
}

/// A minimal virtual PIC in VPICD's image: devices virtualize IRQs, the machine (or a device)
/// raises requests, and the machine delivers them with `dispatchIRQ` when the guest can take
/// interrupts (`interruptsEnabled`, the guest's IF: the machine's decision).
///
/// Decisions:
/// - A request is a bit per IRQ (edge-triggered): raising a pending IRQ again changes nothing;
///   delivery clears it. `pendingIRQs` lists them in `VirtualPIC.priorityOrder`.
/// - The handler is called like VPICD's `VID_Hw_Int_Proc`: EAX = IRQ handle (`VirtualIRQ.handle`),
///   EBX = current VM, EBP = frame address, IF clear, reentrancy count raised. It returns with CF
///   clear when it processed the interrupt, CF set when not (Swift handlers: `.processed` /
///   `.passedOn`). The register rules are the fault handlers' processing rules (EAX, EBX, ECX,
///   EDX, ESI, EDI and the arithmetic flags may change), whatever it answers.
/// - Unvirtualized and spurious deliveries, and handlers answering CF set, are reported in
///   `diagnostics` and the result; the run goes on.
/// - VPICD's services are asynchronous: these may be called from fault handlers without report.
extension VirtualMachineManager {
    /// VPICD_Virtualize_IRQ with a Swift handler (the `VID_Hw_Int_Proc`). Refuses an IRQ above 15
    /// or one already virtualized.
    @discardableResult
    public func virtualizeIRQ(irq: UInt8, name: String, handler: @escaping FaultProc) throws(VirtualPICError)
        -> VirtualIRQ
    {
        try checkVirtualizable(irq)
        guard let address = store.allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        return virtualIRQ(store.virtualizeIRQ(irq, address: address, name: name, kind: .host(handler)))
    }

    /// VPICD_Virtualize_IRQ with a handler address: guest code (or a host slot from
    /// `registerFaultHandler`).
    @discardableResult
    public func virtualizeIRQ(irq: UInt8, name: String? = nil, handlerAt address: FaultHandlerAddress)
        throws(VirtualPICError) -> VirtualIRQ
    {
        try checkVirtualizable(irq)
        guard address.rawValue != 0 else { throw .nullHandler }
        let (known, kind) = describeHandler(at: address)
        return virtualIRQ(store.virtualizeIRQ(irq, address: address, name: name ?? known, kind: kind))
    }

    /// VPICD_Force_Default_Behavior: ends the virtualization of `irq` (its pending request stays).
    public func forceDefaultBehavior(irq: UInt8) throws(VirtualPICError) {
        guard irq < VirtualPIC.irqCount else { throw .irqOutOfRange(irq) }
        guard store.forceDefaultBehavior(irq) else { throw .notVirtualized(irq) }
    }

    private func checkVirtualizable(_ irq: UInt8) throws(VirtualPICError) {
        guard irq < VirtualPIC.irqCount else { throw .irqOutOfRange(irq) }
        if let i = store.irqHandler(irq) { throw .alreadyVirtualized(irq: irq, by: store.records[i].name) }
    }

    /// How an IRQ handler's record is reported.
    private func virtualIRQ(_ index: Int) -> VirtualIRQ {
        let r = store.records[index]
        return VirtualIRQ(irq: r.vector &- VirtualPIC.baseVector, name: r.name, handler: r.address, kind: r.kind.label)
    }

    /// The virtualized IRQs, by IRQ number.
    public var virtualizedIRQs: [VirtualIRQ] { store.virtualizedIRQs.map(virtualIRQ) }

    /// VPICD_Set_Int_Request: records a request for `irq` (edge: a pending IRQ stays pending once).
    public func raiseIRQ(_ irq: UInt8) throws(VirtualPICError) {
        guard irq < VirtualPIC.irqCount else { throw .irqOutOfRange(irq) }
        pendingIRQMask |= 1 << UInt16(irq)
    }

    /// VPICD_Clear_Int_Request: withdraws a request not yet delivered.
    public func clearIRQ(_ irq: UInt8) throws(VirtualPICError) {
        guard irq < VirtualPIC.irqCount else { throw .irqOutOfRange(irq) }
        pendingIRQMask &= ~(1 << UInt16(irq))
    }

    /// Whether `irq` has a request waiting.
    public func isIRQPending(_ irq: UInt8) -> Bool {
        irq < VirtualPIC.irqCount && pendingIRQMask & (1 << UInt16(irq)) != 0
    }

    /// The pending IRQs, highest priority first (`VirtualPIC.priorityOrder`).
    public var pendingIRQs: [UInt8] { VirtualPIC.priorityOrder.filter { isIRQPending($0) } }

    /// The IRQ `dispatchIRQ()` would deliver next, nil when none is pending. The machine delivers
    /// only when the guest can take interrupts.
    public var nextPendingIRQ: UInt8? {
        // Asked after every guest exit: nothing pending is the common case.
        if pendingIRQMask == 0 { return nil }
        return VirtualPIC.priorityOrder.first { isIRQPending($0) }
    }

    /// Delivers one IRQ: `irq`, or the highest-priority pending one when nil. The request is
    /// cleared and the virtualized handler runs (see the extension's notes). An IRQ nobody
    /// virtualized gives `.unvirtualized`; no pending request (none at all, or `irq` not pending)
    /// gives `.spurious` — both reported in `diagnostics`.
    ///
    /// - Throws: `.irqOutOfRange`; `.reentrantDispatch` from inside a fault, NMI or IRQ handler;
    ///   `.registerViolation` in strict mode; `.noGuestCallout`/`.guestCallout`.
    public func dispatchIRQ(_ irq: UInt8? = nil, frame: inout ClientRegisters, frameAddress: UInt32,
                            entryRegisters: HandlerRegisters) throws(IRQDispatchError) -> IRQDispatchOutcome
    {
        var trace: IRQDispatchTrace? = IRQDispatchTrace(irq: irq, frameAddress: frameAddress,
                                                        entryFrame: FrameSnapshot(frame), visit: nil, outcome: "")
        let (result, registers) = try deliverIRQ(irq, frame: &frame, frameAddress: frameAddress,
                                                 entryRegisters: entryRegisters, trace: &trace)
        return IRQDispatchOutcome(result: result, trace: trace ?? Self.minimalIRQTrace(irq, frameAddress),
                                  registers: registers)
    }

    /// The trace an error carries when none was being recorded.
    static func minimalIRQTrace(_ irq: UInt8?, _ frameAddress: UInt32) -> IRQDispatchTrace {
        IRQDispatchTrace(irq: irq, frameAddress: frameAddress, entryFrame: FrameSnapshot.empty, visit: nil, outcome: "")
    }

    /// The delivery behind `dispatchIRQ`. With `trace` nil no visit is recorded (errors still
    /// carry a trace).
    func deliverIRQ(_ irq: UInt8?, frame: inout ClientRegisters, frameAddress: UInt32,
                    entryRegisters: HandlerRegisters, trace: inout IRQDispatchTrace?)
        throws(IRQDispatchError) -> (IRQDispatchResult, HandlerRegisters)
    {
        if let n = irq, n >= VirtualPIC.irqCount { throw .irqOutOfRange(n) }
        if let active = activeVector { throw .reentrantDispatch(irq: irq, activeVector: active) }
        guard let n = irq ?? nextPendingIRQ, isIRQPending(n) else {
            let text = "spurious IRQ" + (irq.map { " \($0): no request pending" } ?? ": no request pending")
            diagnostics.append(.unhandledIRQ(text))
            trace?.outcome = text
            return (.spurious(irq: irq), entryRegisters)
        }
        pendingIRQMask &= ~(1 << UInt16(n))
        trace?.irq = n
        let vector = VirtualPIC.baseVector + n
        guard let index = store.irqHandler(n) else {
            let text = "unhandled IRQ \(n) (vector \(vmmHex(vector, 2))h): no device virtualized it"
            diagnostics.append(.unhandledIRQ(text))
            trace?.outcome = text
            return (.unvirtualized(irq: n), entryRegisters)
        }
        func errorTrace(_ outcome: String) -> IRQDispatchTrace {
            var t = trace ?? Self.minimalIRQTrace(n, frameAddress)
            t.outcome = outcome
            return t
        }

        let saved = enterHandlerContext(vector: vector)
        defer { leaveHandlerContext(saved) }
        // VID_Hw_Int_Proc: EAX = the IRQ handle, and the fault handlers' EBX, EBP and IF.
        var registers = callRegisters(entryRegisters, frameAddress: frameAddress)
        registers.eax = UInt32(vector)
        var context = FaultHandlerContext(vector: vector, address: FaultHandlerAddress(rawValue: 0), previous: nil,
                                          vmm: self)
        let run: HandlerRun
        do {
            run = try runHandler(index, role: .irq(n), registers: &registers, frame: &frame,
                                 frameAddress: frameAddress, context: &context, recording: trace == nil ? .none : .all,
                                 record: { trace?.visit = $0 })
        } catch {
            switch error {
            case let .threw(message):
                throw .handlerThrew(irq: n, name: store.records[index].name, message: message)
            case let .noGuestCallout(a):
                throw .noGuestCallout(handler: a, trace: errorTrace("error: no guest callout for \(a)"))
            case let .guestCallout(e, a):
                throw .guestCallout(e, handler: a, trace: errorTrace("error: \(e)"))
            }
        }
        if configuration.strictRegisterRules, let violation = run.violations.first {
            throw .registerViolation(violation, trace: errorTrace("error: \(violation)"))
        }
        let name = store.records[index].name, address = store.records[index].address
        if run.disposition == .processed {
            trace?.outcome = "processed by \(name) at \(address)"
            return (.processed(irq: n, by: address, name: name), registers)
        }
        let text = "IRQ \(n) (vector \(vmmHex(vector, 2))h) not processed by \(name) at \(address) (CF set)"
        diagnostics.append(.unhandledIRQ(text))
        trace?.outcome = text
        return (.notProcessed(irq: n, by: address, name: name), registers)
    }
}
