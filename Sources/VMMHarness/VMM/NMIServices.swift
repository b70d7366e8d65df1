/// A Hook_NMI_Event procedure written in Swift. It is called after the last NMI handler with
/// EBX = current VM, EBP = address of the client register frame (`Client_Reg_Struc`) and IF clear,
/// and returns (near `ret`). It may change EAX, EBX, ECX, EDX, ESI, EDI and the arithmetic flags.
public typealias NMIEventProc = (_ registers: inout HandlerRegisters, _ frame: inout ClientRegisters,
                                 _ vmm: VirtualMachineManager) -> Void

/// Why Set_NMI_Handler_Addr or Hook_NMI_Event refused (harness: carry set in the register face;
/// the DDK defines no failure for either).
public enum NMIServiceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// ESI = 0.
    case nullHandler(service: String)
    /// Hook_NMI_Event after Init_Complete: the DDK allows it during initialization only.
    case afterInitialization(phase: VMMPhase)
    /// No handler slot left in the host area.
    case hostAreaExhausted

    public var description: String {
        switch self {
        case let .nullHandler(s): return "\(s): address 0 is refused"
        case let .afterInitialization(p):
            return "Hook_NMI_Event is allowed only during initialization (up to Init_Complete); the VMM is at \(p.rawValue)"
        case .hostAreaExhausted: return "no host-area slot left for another handler"
        }
    }
}

/// One NMI event procedure as the VMM reports it (install order).
public struct NMIEventEntry: Equatable, Sendable, Codable, CustomStringConvertible {
    public var address: FaultHandlerAddress
    public var name: String
    /// "host" or "guest".
    public var kind: String
    public var description: String { "\(address) \(name) [\(kind)]" }
}

/// Everything that happened for one NMI: the handler chain walk, then the events.
public struct NMIDispatchTrace: Equatable, Sendable, Codable, CustomStringConvertible {
    public var frameAddress: UInt32
    /// The frame as the NMI left it.
    public var entryFrame: FrameSnapshot
    /// NMI handlers visited, newest first; the VMM's default handler last when reached.
    public var handlers: [FaultHandlerVisit]
    /// Hook_NMI_Event procedures run, in install order (disposition always `.processed`).
    public var events: [FaultHandlerVisit]
    /// One line: how the chain ended, how many events ran, or an error.
    public var outcome: String

    public var description: String {
        let f = entryFrame.fields
        var s = "NMI at \(vmmHex(f["Client_CS"] ?? 0, 4)):\(vmmHex(f["Client_EIP"] ?? 0, 8)) frame \(vmmHex(frameAddress, 8))"
        for (i, v) in handlers.enumerated() { s += "\n  \(i + 1). \(v)" }
        for (i, v) in events.enumerated() { s += "\n  event \(i + 1). \(v)" }
        s += "\n  => \(outcome)"
        return s
    }
}

/// The result of `dispatchNMI`.
public struct NMIDispatchOutcome: Equatable, Sendable {
    public var trace: NMIDispatchTrace
    /// The registers the last NMI handler left (before the events, which get fresh entry registers).
    public var registers: HandlerRegisters
    /// The handler that returned instead of chaining, if any (also in `diagnostics`).
    public var endedEarlyBy: FaultHandlerAddress?
    /// Set when a handler or event called Fatal_Error_Handler: the run must end.
    public var termination: FatalErrorReport?
}

/// Why `dispatchNMI` stopped with an error instead of a result.
public enum NMIDispatchError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An NMI was dispatched while an NMI was being dispatched (the CPU blocks NMIs until IRET).
    case nestedNMI
    /// Strict mode: a handler or event broke the register rules.
    case registerViolation(RegisterViolation, trace: NMIDispatchTrace)
    /// Strict mode: an NMI handler called a service (NMI handlers may call none).
    case serviceCallFromNMIHandler(service: String, handler: String?, trace: NMIDispatchTrace)
    /// A guest handler or event is installed but the VMM has no `GuestFaultCallout`.
    case noGuestCallout(handler: FaultHandlerAddress, trace: NMIDispatchTrace)
    /// The guest callout failed.
    case guestCallout(HarnessError, handler: FaultHandlerAddress, trace: NMIDispatchTrace)
    /// A Swift NMI handler threw.
    case handlerThrew(name: String, message: String)

    public var description: String {
        switch self {
        case .nestedNMI: return "NMI raised while an NMI was being dispatched"
        case let .handlerThrew(name, message): return "NMI handler \(name) threw: \(message)"
        case let .registerViolation(v, _): return "register rule violated: \(v)"
        case let .serviceCallFromNMIHandler(s, h, _):
            return "service \(s) called from an NMI handler" + (h.map { " (\($0))" } ?? "") + "; NMI handlers may call no service"
        case let .noGuestCallout(h, _): return "guest NMI procedure \(h) cannot be called: no guest callout"
        case let .guestCallout(e, h, _): return "guest NMI procedure \(h): \(e)"
        }
    }
}

/// The NMI services and NMI dispatch.
///
/// Decisions where the DDK is silent:
/// - The chain: Set_NMI_Handler_Addr records the handler that was current at that moment (what
///   Get_NMI_Handler_Addr returned, which the DDK requires the new handler to read and jump to) as
///   its previous. Dispatch starts at the current handler and follows those links to the VMM's
///   default handler (`VMMHostArea.defaultNMIHandler`), the end of the chain, which does nothing.
/// - NMI handlers are called like fault handlers (EBX = VM, EBP = frame address, IF clear,
///   reentrancy count raised) and follow the same register rules: passing on keeps every register.
/// - A handler that returns instead of jumping to its previous ends the chain early: the rest of
///   the chain and the default handler do not run; it is reported (`nmiChainEndedEarly`) and the
///   events still run.
/// - Any service call from an NMI handler, asynchronous ones included, is reported
///   (`serviceCallFromNMIHandler`); strict mode (`strictRegisterRules`) makes it an error. The
///   service still runs. Event procedures are under the ordinary asynchronous-service rule.
/// - Hook_NMI_Event is accepted before boot and up to and including Init_Complete, refused from
///   Sys_VM_Init on (the DDK: "initialization only"); address 0 is refused too.
/// - Set_NMI_Handler_Addr refuses address 0 (nothing changes).
/// - `dispatchNMI` may run while a fault is being dispatched (an NMI is not maskable); a nested
///   NMI is an error. A fault dispatched from inside an NMI handler is `.reentrantDispatch`.
extension VirtualMachineManager {
    var nmiCurrentHandler: FaultHandlerAddress {
        nmiHead.map { nmiRecords[$0].address } ?? VMMHostArea.defaultNMIHandler
    }

    /// Get_NMI_Handler_Addr (0016h): ESI = the current NMI handler (the VMM's default handler,
    /// `VMMHostArea.defaultNMIHandler`, when none was set).
    public func getNMIHandlerAddr() -> FaultHandlerAddress {
        note(ordinal: VMMServiceOrdinal.getNMIHandlerAddr)
        return nmiCurrentHandler
    }

    /// Set_NMI_Handler_Addr (0017h): makes `address` (ESI) the current NMI handler. The handler
    /// must jump to the handler `getNMIHandlerAddr()` returned before this call; the VMM records
    /// that one as its previous. Throws `.nullHandler` for 0.
    public func setNMIHandlerAddr(_ address: FaultHandlerAddress) throws(NMIServiceError) {
        note(ordinal: VMMServiceOrdinal.setNMIHandlerAddr)
        try setNMIHandler(address)
    }

    /// Get_NMI_Handler_Addr + Set_NMI_Handler_Addr for a Swift handler: gives it a host-area
    /// address and makes it current. The handler returns `.passedOn` to jump to its previous
    /// (`context.previous`), which is what an NMI handler must do; `.processed` ends the chain
    /// early (reported). Returns the previous handler.
    @discardableResult
    public func installNMIHandler(name: String, handler: @escaping FaultProc) throws(NMIServiceError)
        -> FaultHandlerAddress
    {
        let previous = getNMIHandlerAddr()
        guard let address = allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        try setNMIHandlerAddr(address)
        return previous
    }

    func setNMIHandler(_ address: FaultHandlerAddress) throws(NMIServiceError) {
        guard address.rawValue != 0 else {
            diagnostics.append(.serviceRefused(service: "Set_NMI_Handler_Addr", reason: "handler address 0"))
            throw .nullHandler(service: "Set_NMI_Handler_Addr")
        }
        let (name, kind) = describeHandler(at: address)
        nmiRecords.append(NMIRecord(address: address, name: name, kind: kind, tier: newHookTier,
                                    previousAddress: nmiCurrentHandler, previousRecord: nmiHead))
        nmiHead = nmiRecords.count - 1
    }

    /// Hook_NMI_Event (0018h) with a Swift procedure: runs after the last NMI handler, in install
    /// order. Only during initialization: throws `.afterInitialization` from Sys_VM_Init on.
    public func hookNMIEvent(name: String, handler: @escaping NMIEventProc) throws(NMIServiceError) {
        note(ordinal: VMMServiceOrdinal.hookNMIEvent)
        try checkNMIEventPhase()
        // The slot gives the procedure a guest-visible address; hooked as a fault handler it would pass on.
        guard let address = allocateSlot(name: name, kind: .host({ _, _, _ in .passedOn })) else {
            throw .hostAreaExhausted
        }
        nmiEvents.append(NMIEventRecord(address: address, name: name, kind: .host(handler)))
    }

    /// Hook_NMI_Event (0018h) with a procedure address (ESI): a guest procedure.
    public func hookNMIEvent(procedureAt address: FaultHandlerAddress) throws(NMIServiceError) {
        note(ordinal: VMMServiceOrdinal.hookNMIEvent)
        try addNMIEvent(address)
    }

    func addNMIEvent(_ address: FaultHandlerAddress) throws(NMIServiceError) {
        try checkNMIEventPhase()
        guard address.rawValue != 0 else {
            diagnostics.append(.serviceRefused(service: "Hook_NMI_Event", reason: "procedure address 0"))
            throw .nullHandler(service: "Hook_NMI_Event")
        }
        let name = guestHandlerNames[address] ?? slot(at: address)?.name
            ?? currentDevice.map { devices[$0].device.name } ?? "guest NMI event"
        nmiEvents.append(NMIEventRecord(address: address, name: name, kind: .guest(address)))
    }

    private func checkNMIEventPhase() throws(NMIServiceError) {
        switch phase {
        case .notBooted, .sysCriticalInit, .deviceInit, .initComplete:
            return
        default:
            diagnostics.append(.serviceRefused(service: "Hook_NMI_Event", reason: "after Init_Complete (\(phase.rawValue))"))
            throw .afterInitialization(phase: phase)
        }
    }

    /// Name and kind of the handler at `address`: a host slot's, or a guest handler's.
    func describeHandler(at address: FaultHandlerAddress) -> (String, FaultHandlerKind) {
        if let s = slot(at: address) { return (s.name, s.kind) }
        let name = guestHandlerNames[address] ?? currentDevice.map { devices[$0].device.name } ?? "guest handler"
        return (name, .guest(address))
    }

    /// The NMI handler chain, current handler first, ending with the VMM's default handler.
    public func nmiHandlerChain() -> [FaultChainEntry] {
        var out: [FaultChainEntry] = []
        var cursor = nmiHead
        while let i = cursor, out.count <= nmiRecords.count {
            let r = nmiRecords[i]
            out.append(FaultChainEntry(address: r.address, name: r.name, tier: r.tier, kind: r.kind.label,
                                       previous: r.previousAddress, owner: nil))
            cursor = r.previousRecord
        }
        out.append(FaultChainEntry(address: VMMHostArea.defaultNMIHandler, name: "VMM", tier: .vmm, kind: "vmm",
                                   previous: nil, owner: nil))
        return out
    }

    /// The Hook_NMI_Event procedures in install (= run) order.
    public var nmiEventProcedures: [NMIEventEntry] {
        nmiEvents.map {
            let kind: String
            switch $0.kind {
            case .host: kind = "host"
            case .guest: kind = "guest"
            }
            return NMIEventEntry(address: $0.address, name: $0.name, kind: kind)
        }
    }

    /// Dispatches one NMI: walks the NMI handler chain from the current handler (Swift handlers
    /// directly, guest handlers through `GuestFaultCallout` with role `.nmiHandler`; reaching the
    /// previous handler = passed on) to the VMM's default handler, then runs every Hook_NMI_Event
    /// procedure in install order with EBX = VM, EBP = `frameAddress`. See the extension's notes
    /// for the rules. `frame` is updated with what handlers and events changed.
    public func dispatchNMI(frame: inout ClientRegisters, frameAddress: UInt32, entryRegisters: HandlerRegisters)
        throws(NMIDispatchError) -> NMIDispatchOutcome
    {
        if nmiDispatchActive { throw .nestedNMI }
        let saved = (vector: activeVector, name: currentHandlerName, calls: currentVisitCalls,
                     interrupts: interruptsEnabled, count: reenterCount, depth: reentrantDepth)
        nmiDispatchActive = true
        activeVector = 0x02
        interruptsEnabled = false
        reenterCount += 1
        defer {
            nmiDispatchActive = false
            nmiHandlerRunning = false
            nmiServiceViolation = nil
            activeVector = saved.vector
            currentHandlerName = saved.name
            currentVisitCalls = saved.calls
            interruptsEnabled = saved.interrupts
            reenterCount = saved.count
            reentrantDepth = saved.depth
        }

        var trace = NMIDispatchTrace(frameAddress: frameAddress, entryFrame: FrameSnapshot(frame), handlers: [],
                                     events: [], outcome: "")
        var callRegisters = entryRegisters
        callRegisters.ebx = currentVM
        callRegisters.ebp = frameAddress
        callRegisters.eflags = (callRegisters.eflags & ~EFlags.if) | EFlags.reserved1
        var registers = callRegisters
        var endedEarly: FaultHandlerAddress?
        var endLine = ""

        // The handler chain, then the default handler when every handler chained.
        var cursor = nmiHead
        var steps = 0
        var reachedDefault = false
        while !reachedDefault, endedEarly == nil {
            let address: FaultHandlerAddress, name: String, kind: FaultHandlerKind, tier: FaultHookTier
            let previous: FaultHandlerAddress?
            if let i = cursor, steps <= nmiRecords.count {
                let r = nmiRecords[i]
                (address, name, kind, tier, previous) = (r.address, r.name, r.kind, r.tier, r.previousAddress)
                cursor = r.previousRecord
                steps += 1
            } else {
                (address, name, kind, tier, previous) = (VMMHostArea.defaultNMIHandler, "VMM", .vmmDefault, .vmm, nil)
            }
            let before = registers
            let frameBefore = frame
            var after = registers
            currentHandlerName = "NMI handler \(name) at \(address)"
            currentVisitCalls = []
            nmiServiceViolation = nil
            let terminationsBefore = terminationCount
            let disposition: FaultDisposition
            switch kind {
            case let .host(proc):
                nmiHandlerRunning = true
                do {
                    disposition = try proc(&after, &frame, FaultHandlerContext(vector: 0x02, address: address,
                                                                               previous: previous, vmm: self))
                } catch {
                    nmiHandlerRunning = false
                    throw .handlerThrew(name: name, message: "\(error)")
                }
                nmiHandlerRunning = false
            case .vmmDefault:
                disposition = .processed
                reachedDefault = true
            case let .guest(a):
                guard let callout = guestCallout else {
                    trace.outcome = "error: no guest callout for \(a)"
                    throw .noGuestCallout(handler: a, trace: trace)
                }
                let call = GuestFaultHandlerCall(vector: 0x02, handler: a, previous: previous, registers: before,
                                                 frameAddress: frameAddress, role: .nmiHandler)
                nmiHandlerRunning = true
                do {
                    let r = try callout.callGuestFaultHandler(call, frame: &frame)
                    nmiHandlerRunning = false
                    after = r.registers
                    disposition = r.disposition
                } catch {
                    nmiHandlerRunning = false
                    trace.outcome = "error: \(error)"
                    throw .guestCallout(error, handler: a, trace: trace)
                }
            }
            let violations = Self.checkRules(before: before, after: after, disposition: disposition, name: name,
                                             address: address)
            trace.handlers.append(FaultHandlerVisit(
                address: address, name: name, tier: tier, kind: kind.label, disposition: disposition,
                registerChanges: ValueChange.diff(before.namedValues, after.namedValues),
                frameChanges: ValueChange.diff(frameBefore.namedFields, frame.namedFields),
                violations: violations, serviceCalls: currentVisitCalls))
            diagnostics.append(contentsOf: violations.map { .registerViolation($0) })
            if terminationCount != terminationsBefore, let t = termination {
                trace.outcome = "terminated by \(name): \(t)"
                return NMIDispatchOutcome(trace: trace, registers: after, endedEarlyBy: address, termination: t)
            }
            if configuration.strictRegisterRules {
                if let s = nmiServiceViolation {
                    trace.outcome = "error: service \(s.service) called from NMI handler \(name)"
                    throw .serviceCallFromNMIHandler(service: s.service, handler: s.handler, trace: trace)
                }
                if let v = violations.first {
                    trace.outcome = "error: \(v)"
                    throw .registerViolation(v, trace: trace)
                }
            }
            registers = after
            if reachedDefault {
                endLine = "chain ended at the VMM's default NMI handler"
            } else if disposition == .processed {
                endedEarly = address
                diagnostics.append(.nmiChainEndedEarly(handler: name, address: address))
                endLine = "chain ended early: \(name) at \(address) returned instead of jumping to its previous handler"
            }
        }
        let chainRegisters = registers

        // The events, in install order, each with fresh entry registers.
        for event in nmiEvents {
            let before = callRegisters
            var after = callRegisters
            let frameBefore = frame
            currentHandlerName = "NMI event \(event.name) at \(event.address)"
            currentVisitCalls = []
            let terminationsBefore = terminationCount
            switch event.kind {
            case let .host(proc):
                proc(&after, &frame, self)
            case let .guest(a):
                guard let callout = guestCallout else {
                    trace.outcome = "error: no guest callout for \(a)"
                    throw .noGuestCallout(handler: a, trace: trace)
                }
                let call = GuestFaultHandlerCall(vector: 0x02, handler: a, previous: nil, registers: before,
                                                 frameAddress: frameAddress, role: .nmiEvent)
                do {
                    after = try callout.callGuestFaultHandler(call, frame: &frame).registers
                } catch {
                    trace.outcome = "error: \(error)"
                    throw .guestCallout(error, handler: a, trace: trace)
                }
            }
            let violations = Self.checkRules(before: before, after: after, disposition: .processed, name: event.name,
                                             address: event.address)
            trace.events.append(FaultHandlerVisit(
                address: event.address, name: event.name, tier: .postCriticalInit,
                kind: event.kind.label, disposition: .processed,
                registerChanges: ValueChange.diff(before.namedValues, after.namedValues),
                frameChanges: ValueChange.diff(frameBefore.namedFields, frame.namedFields),
                violations: violations, serviceCalls: currentVisitCalls))
            diagnostics.append(contentsOf: violations.map { .registerViolation($0) })
            if terminationCount != terminationsBefore, let t = termination {
                trace.outcome = "terminated by NMI event \(event.name): \(t)"
                return NMIDispatchOutcome(trace: trace, registers: chainRegisters, endedEarlyBy: endedEarly,
                                          termination: t)
            }
            if configuration.strictRegisterRules, let v = violations.first {
                trace.outcome = "error: \(v)"
                throw .registerViolation(v, trace: trace)
            }
        }
        trace.outcome = endLine + "; \(nmiEvents.count) event procedure\(nmiEvents.count == 1 ? "" : "s") ran"
        return NMIDispatchOutcome(trace: trace, registers: chainRegisters, endedEarlyBy: endedEarly, termination: nil)
    }
}

extension VirtualMachineManager.NMIEventKind {
    var label: String {
        switch self {
        case .host: return "host"
        case .guest: return "guest"
        }
    }
}
