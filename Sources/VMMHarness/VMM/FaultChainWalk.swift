// MARK: - Fault dispatch

extension VirtualMachineManager {
    /// Dispatches one ring-0 fault through the Hook_VMM_Fault chain of `vector`.
    ///
    /// Each handler is called as `call [FaultProc]` is: with `entryRegisters` except EBX = current VM,
    /// EBP = `frameAddress` and IF clear, interrupts disabled and the reentrancy count raised by one.
    /// A handler that passes on hands its registers to the previous handler; the walk stops at the
    /// first that processes. If the last handler passes on, the fault is unhandled and the result
    /// carries the Windows fatal-exception report. `frame` is updated with what handlers changed.
    ///
    /// - Throws: `.reentrantDispatch` when called from inside an NMI handler,
    ///   `.faultNestingTooDeep` beyond `maximumFaultNesting` faults inside handlers; `.registerViolation` in
    ///   strict mode; `.noGuestCallout`/`.guestCallout` when a guest handler cannot be run.
    public func dispatchFault(vector: UInt8, frame: inout ClientRegisters, frameAddress: UInt32,
                              entryRegisters: HandlerRegisters) throws(FaultDispatchError) -> FaultDispatchOutcome
    {
        try dispatchFault(.vmm, vector: vector, frame: &frame, frameAddress: frameAddress,
                          entryRegisters: entryRegisters)
    }

    /// Dispatches one fault through the chain of `vector` that belongs to the mode the fault came
    /// from: `.vmm` (ring 0, Hook_VMM_Fault), `.pm` (a protected-mode application, Hook_PM_Fault) or
    /// `.v86` (virtual-8086 mode, Hook_V86_Fault). Only that chain's handlers are visited.
    ///
    /// Handlers are called and checked exactly as for `dispatchFault(vector:frame:frameAddress:entryRegisters:)`.
    /// An unprocessed fault ends with `.unhandled`: for `.vmm` the ring-0 fatal-exception report,
    /// for `.pm`/`.v86` the application report (see `FatalExceptionReport.init(vector:frame:chain:)`).
    /// The trace's `chain` says which chain ran.
    public func dispatchFault(_ chain: FaultChainKind, vector: UInt8, frame: inout ClientRegisters,
                              frameAddress: UInt32, entryRegisters: HandlerRegisters)
        throws(FaultDispatchError) -> FaultDispatchOutcome
    {
        var trace: FaultDispatchTrace? = FaultDispatchTrace(
            vector: vector, frameAddress: frameAddress,
            entryFrame: recordsTraces ? FrameSnapshot(frame) : FrameSnapshot.empty, visits: [], outcome: "", chain: chain)
        let (result, registers) = try walkChain(chain, vector: vector, frame: &frame, frameAddress: frameAddress,
                                                entryRegisters: entryRegisters, trace: &trace)
        return FaultDispatchOutcome(result: result,
                                    trace: trace ?? Self.minimalTrace(chain, vector: vector, frameAddress: frameAddress),
                                    registers: registers)
    }

    /// The trace an error carries when none was being recorded: the fault and the chain only.
    static func minimalTrace(_ chain: FaultChainKind, vector: UInt8, frameAddress: UInt32) -> FaultDispatchTrace {
        FaultDispatchTrace(vector: vector, frameAddress: frameAddress, entryFrame: FrameSnapshot.empty, visits: [],
                           outcome: "", chain: chain)
    }

    /// The chain walk behind `dispatchFault`. With `trace` nil (the machine's path for faults it
    /// does not list, when `recordsTraces` is off) no trace is built at all; a trace value costs
    /// copies and releases of its arrays and strings on every fault. Errors still carry one.
    /// With a trace and `recordsTraces` off, only visits that broke a rule or called a service
    /// are recorded.
    func walkChain(_ chain: FaultChainKind, vector: UInt8, frame: inout ClientRegisters, frameAddress: UInt32,
                   entryRegisters: HandlerRegisters, trace: inout FaultDispatchTrace?)
        throws(FaultDispatchError) -> (FaultDispatchResult, HandlerRegisters)
    {
        // A fault raised by ring-0 code while a handler runs (a handler that faults) is
        // dispatched like any other, with its own frame: the VMM's fault stack frame is
        // re-entrant. Bounded, so a handler that faults in its own handler cannot recurse forever.
        if let active = activeVector {
            // Not inside an NMI handler: it must not fault (and may call no service).
            if nmiDispatchActive { throw .reentrantDispatch(vector: vector, activeVector: active) }
            guard faultNesting.count < Self.maximumFaultNesting else {
                throw .faultNestingTooDeep(vectors: faultNesting + [vector])
            }
        }
        faultNesting.append(vector)
        let saved = enterHandlerContext(vector: vector)
        defer {
            leaveHandlerContext(saved)
            faultNesting.removeLast()
        }

        // Asked once: testing the optional trace in the loop copied it on every visit.
        let recording: VisitRecording = trace == nil ? .none : recordsTraces ? .all : .notable
        func errorTrace(_ outcome: String) -> FaultDispatchTrace {
            var t = trace ?? Self.minimalTrace(chain, vector: vector, frameAddress: frameAddress)
            t.outcome = outcome
            return t
        }
        let role = HandlerRole.fault(chain)
        var registers = callRegisters(entryRegisters, frameAddress: frameAddress)
        var cursor = store.head(chain, vector)
        var steps = 0
        var context = FaultHandlerContext(vector: vector, address: FaultHandlerAddress(rawValue: 0), previous: nil,
                                          vmm: self)
        while let index = cursor, steps <= store.records.count {
            steps += 1
            // Read before the handler runs, which may hook or unhook.
            let next = store.records[index].previousRecord
            let run: HandlerRun
            do {
                run = try runHandler(index, role: role, registers: &registers, frame: &frame,
                                     frameAddress: frameAddress, context: &context, recording: recording,
                                     record: { trace?.visits.append($0) })
            } catch {
                let name = store.records[index].name
                switch error {
                case let .threw(message):
                    throw .handlerThrew(name: name, handler: store.records[index].address, message: message,
                                        trace: errorTrace("error: \(name) threw \(message)"))
                case let .noGuestCallout(a):
                    throw .noGuestCallout(handler: a, trace: errorTrace("error: no guest callout for \(a)"))
                case let .guestCallout(e, a):
                    throw .guestCallout(e, handler: a, trace: errorTrace("error: \(e)"))
                }
            }
            if run.terminated, let t = termination {
                trace?.outcome = "terminated by \(store.records[index].name): \(t)"
                return (.terminated(t), registers)
            }
            if configuration.strictRegisterRules, let v = run.violations.first {
                throw .registerViolation(v, trace: errorTrace("error: \(v)"))
            }
            if run.disposition == .processed {
                let address = store.records[index].address, name = store.records[index].name
                if recording == .all { trace?.outcome = "processed by \(name) at \(address)" }
                return (.processed(by: address, name: name), registers)
            }
            cursor = next
        }
        let report = chain == .vmm ? fatalExceptionReport(vector: vector, frame: frame)
            : FatalExceptionReport(vector: vector, frame: frame, chain: chain)
        trace?.outcome = "unhandled: \(report.message)"
        return (.unhandled(report), registers)
    }

    /// The Windows fatal-exception report for `frame` (see `FatalExceptionReport`).
    public func fatalExceptionReport(vector: UInt8, frame: ClientRegisters) -> FatalExceptionReport {
        if let owner = devices.codeOwner(of: frame.eip) {
            return FatalExceptionReport(vector: vector, frame: frame, device: owner)
        }
        if let r = configuration.vmmCodeRange, r.contains(frame.eip) {
            return FatalExceptionReport(vector: vector, frame: frame,
                                        device: ("VMM", VMMServiceTable.vmmDeviceID, r.lowerBound))
        }
        return FatalExceptionReport(vector: vector, frame: frame, device: nil)
    }
}
