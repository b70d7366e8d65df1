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
///   NMI is an error. A fault dispatched from inside an NMI handler is `.reentrantDispatch`
///   (faults inside fault and IRQ handlers nest, see `walkChain`).
extension VirtualMachineManager {
    /// The current NMI handler: the head of the NMI chain.
    var nmiCurrentHandler: FaultHandlerAddress { store.records[store.nmiHead].address }

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
        guard let address = store.allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        try setNMIHandlerAddr(address)
        return previous
    }

    func setNMIHandler(_ address: FaultHandlerAddress) throws(NMIServiceError) {
        guard address.rawValue != 0 else {
            diagnostics.append(.serviceRefused(service: "Set_NMI_Handler_Addr", reason: "handler address 0"))
            throw .nullHandler(service: "Set_NMI_Handler_Addr")
        }
        let (name, kind) = describeHandler(at: address)
        store.setNMIHandler(address, name: name, kind: kind, tier: store.newHookTier)
    }

    /// Hook_NMI_Event (0018h) with a Swift procedure: runs after the last NMI handler, in install
    /// order. Only during initialization: throws `.afterInitialization` from Sys_VM_Init on.
    public func hookNMIEvent(name: String, handler: @escaping NMIEventProc) throws(NMIServiceError) {
        note(ordinal: VMMServiceOrdinal.hookNMIEvent)
        try checkNMIEventPhase()
        // The slot gives the procedure a guest-visible address; hooked as a fault handler it would pass on.
        guard let address = store.allocateSlot(name: name, kind: .host({ _, _, _ in .passedOn })) else {
            throw .hostAreaExhausted
        }
        store.addNMIEvent(address, name: name, kind: .host({ registers, frame, context in
            handler(&registers, &frame, context.vmm)
            return .processed
        }))
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
        let name = guestHandlerNames[address] ?? store.slot(at: address)?.name ?? devices.currentName
            ?? "guest NMI event"
        store.addNMIEvent(address, name: name, kind: .guest(address))
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

    /// The NMI handler chain, current handler first, ending with the VMM's default handler.
    public func nmiHandlerChain() -> [FaultChainEntry] {
        store.chain(from: store.nmiHead).map(chainEntry)
    }

    /// The Hook_NMI_Event procedures in install (= run) order.
    public var nmiEventProcedures: [NMIEventEntry] {
        store.nmiEvents.map {
            NMIEventEntry(address: store.records[$0].address, name: store.records[$0].name,
                          kind: store.records[$0].kind.label)
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
        var trace: NMIDispatchTrace? = NMIDispatchTrace(frameAddress: frameAddress, entryFrame: FrameSnapshot(frame),
                                                        handlers: [], events: [], outcome: "")
        let end = try walkNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: entryRegisters, trace: &trace)
        return NMIDispatchOutcome(trace: trace ?? Self.minimalNMITrace(frameAddress), registers: end.registers,
                                  endedEarlyBy: end.endedEarlyBy, termination: end.termination)
    }

    /// The trace an error carries when none was being recorded.
    static func minimalNMITrace(_ frameAddress: UInt32) -> NMIDispatchTrace {
        NMIDispatchTrace(frameAddress: frameAddress, entryFrame: FrameSnapshot.empty, handlers: [], events: [],
                         outcome: "")
    }

    /// The NMI walk behind `dispatchNMI`: the handler chain, then the events. With `trace` nil no
    /// visit is recorded (errors still carry a trace).
    func walkNMI(frame: inout ClientRegisters, frameAddress: UInt32, entryRegisters: HandlerRegisters,
                 trace: inout NMIDispatchTrace?)
        throws(NMIDispatchError) -> (registers: HandlerRegisters, endedEarlyBy: FaultHandlerAddress?,
                                     termination: FatalErrorReport?)
    {
        if nmiDispatchActive { throw .nestedNMI }
        nmiDispatchActive = true
        // An NMI may interrupt a fault handler: its service calls so far are put back afterwards.
        let interruptedCalls = currentVisitCalls
        let saved = enterHandlerContext(vector: 0x02)
        defer {
            nmiDispatchActive = false
            nmiHandlerRunning = false
            nmiServiceViolation = nil
            leaveHandlerContext(saved)
            currentVisitCalls = interruptedCalls
        }
        let recording: VisitRecording = trace == nil ? .none : .all
        func errorTrace(_ outcome: String) -> NMIDispatchTrace {
            var t = trace ?? Self.minimalNMITrace(frameAddress)
            t.outcome = outcome
            return t
        }
        func dispatchError(_ error: HandlerCallError, _ index: Int) -> NMIDispatchError {
            switch error {
            case let .threw(message):
                return .handlerThrew(name: store.records[index].name, message: message)
            case let .noGuestCallout(a):
                return .noGuestCallout(handler: a, trace: errorTrace("error: no guest callout for \(a)"))
            case let .guestCallout(e, a):
                return .guestCallout(e, handler: a, trace: errorTrace("error: \(e)"))
            }
        }
        let callRegisters = callRegisters(entryRegisters, frameAddress: frameAddress)
        var registers = callRegisters
        var context = FaultHandlerContext(vector: 0x02, address: FaultHandlerAddress(rawValue: 0), previous: nil,
                                          vmm: self)
        var endedEarly: FaultHandlerAddress?
        var endLine = ""

        // The handler chain, from the current handler to the default handler (the chain's end).
        var cursor: Int? = store.nmiHead
        var steps = 0
        while let index = cursor, steps <= store.records.count {
            steps += 1
            let next = store.records[index].previousRecord
            let run: HandlerRun
            do {
                run = try runHandler(index, role: .nmiHandler, registers: &registers, frame: &frame,
                                     frameAddress: frameAddress, context: &context, recording: recording,
                                     record: { trace?.handlers.append($0) })
            } catch {
                throw dispatchError(error, index)
            }
            let name = store.records[index].name, address = store.records[index].address
            if run.terminated, let t = termination {
                trace?.outcome = "terminated by \(name): \(t)"
                return (registers, address, t)
            }
            if configuration.strictRegisterRules {
                if let s = nmiServiceViolation {
                    throw .serviceCallFromNMIHandler(service: s.service, handler: s.handler,
                                                     trace: errorTrace("error: service \(s.service) called from NMI handler \(name)"))
                }
                if let v = run.violations.first { throw .registerViolation(v, trace: errorTrace("error: \(v)")) }
            }
            if case .vmmDefault = store.records[index].kind {
                endLine = "chain ended at the VMM's default NMI handler"
                break
            }
            if run.disposition == .processed {
                endedEarly = address
                diagnostics.append(.nmiChainEndedEarly(handler: name, address: address))
                endLine = "chain ended early: \(name) at \(address) returned instead of jumping to its previous handler"
                break
            }
            cursor = next
        }
        let chainRegisters = registers

        // The events, in install order, each with fresh entry registers.
        for index in store.nmiEvents {
            var eventRegisters = callRegisters
            let run: HandlerRun
            do {
                run = try runHandler(index, role: .nmiEvent, registers: &eventRegisters, frame: &frame,
                                     frameAddress: frameAddress, context: &context, recording: recording,
                                     record: { trace?.events.append($0) })
            } catch {
                throw dispatchError(error, index)
            }
            if run.terminated, let t = termination {
                trace?.outcome = "terminated by NMI event \(store.records[index].name): \(t)"
                return (chainRegisters, endedEarly, t)
            }
            if configuration.strictRegisterRules, let v = run.violations.first {
                throw .registerViolation(v, trace: errorTrace("error: \(v)"))
            }
        }
        let n = store.nmiEvents.count
        trace?.outcome = endLine + "; \(n) event procedure\(n == 1 ? "" : "s") ran"
        return (chainRegisters, endedEarly, nil)
    }
}
