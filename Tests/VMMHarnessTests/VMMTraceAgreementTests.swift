import Testing
@testable import VMMHarness

/// What handlers saw, in call order: the agreement tests compare it across recording modes.
final class HandlerLog {
    var entries: [String] = []
    /// Mock callouts (the VMM holds its callout weakly); emptied when the case is done.
    var kept: [AnyObject] = []
    func add(_ name: String, _ r: HandlerRegisters, _ f: ClientRegisters) {
        entries.append("\(name) \(r) EIP=\(f.eip) EAX=\(f.eax)")
    }
}

/// One dispatch case: a VMM set up the same way for every recording mode, and what to dispatch.
struct AgreementCase: Sendable, CustomTestStringConvertible {
    enum Dispatch: Sendable {
        case fault(FaultChainKind, UInt8)
        case nmi
        case irq(UInt8?)
    }
    var name: String
    var strict = false
    var dispatch: Dispatch
    var setUp: @Sendable (VirtualMachineManager, HandlerLog) throws -> Void
    var testDescription: String { name + (strict ? " (strict)" : "") }
}

/// Everything a dispatch leaves behind except its trace.
struct Observed: Equatable, CustomStringConvertible {
    /// The result, or the error's description (which leaves out the trace).
    var result: String
    var registers: HandlerRegisters?
    var frame: ClientRegisters
    var diagnostics: [VMMDiagnostic]
    var termination: FatalErrorReport?
    var debugLog: String
    var handlerLog: [String]
    /// The outcome line an error's trace carries (the same with or without a trace being recorded).
    var errorOutcome: String?
    /// The VMM's dispatch state afterwards and the chains handlers may have changed.
    var after: String
    var description: String {
        "\(result)\n  regs \(registers.map { "\($0)" } ?? "-")\n  frame \(frame)\n  diag \(diagnostics)\n"
            + "  term \(termination.map { "\($0)" } ?? "-") log \(handlerLog) error \(errorOutcome ?? "-")\n  \(after)"
    }
}

/// The traced and untraced dispatch paths agree: the same handlers run with the same registers and
/// frames, and leave the same result, registers, frame, diagnostics and VMM state; only the trace
/// differs. Modes: full trace (`recordsTraces` on), a trace with only notable visits
/// (`recordsTraces` off, the public API), and no trace at all (`walkChain`/`walkNMI`/`deliverIRQ`
/// with `trace` nil, the machine's path for unlisted faults).
@Suite struct VMMTraceAgreementTests {
    enum Mode: CaseIterable { case full, notable, none }

    /// Runs `c` on a fresh VMM in `mode`. Also returns the trace's visits (nil when none was kept).
    static func observe(_ c: AgreementCase, _ mode: Mode) throws -> (Observed, [FaultHandlerVisit]?) {
        var config = VMMConfiguration()
        config.strictRegisterRules = c.strict
        config.ownFaultPolicy = .processing([0x03])
        let vmm = VirtualMachineManager(configuration: config)
        let log = HandlerLog()
        let memory = DictionaryMemory()
        memory.put("handler gave up", at: 0x0010_0800)
        memory.put("note", at: 0x0010_0900)
        vmm.guestMemory = memory
        try c.setUp(vmm, log)
        vmm.recordsTraces = mode == .full
        var frame = sampleFrame()
        let entry = sampleEntryRegisters()
        var result = "", registers: HandlerRegisters?, errorOutcome: String?, visits: [FaultHandlerVisit]?
        switch c.dispatch {
        case let .fault(chain, vector):
            do {
                if mode == .none {
                    var trace: FaultDispatchTrace?
                    let (r, regs) = try vmm.walkChain(chain, vector: vector, frame: &frame, frameAddress: frameAddress,
                                                      entryRegisters: entry, trace: &trace)
                    #expect(trace == nil, "the untraced path built a trace")
                    (result, registers) = ("\(r)", regs)
                } else {
                    let out = try vmm.dispatchFault(chain, vector: vector, frame: &frame, frameAddress: frameAddress,
                                                    entryRegisters: entry)
                    (result, registers, visits) = ("\(out.result)", out.registers, out.trace.visits)
                }
            } catch {
                result = "error: \(error)"
                switch error {
                case let .registerViolation(_, t), let .noGuestCallout(_, t), let .guestCallout(_, _, t),
                     let .handlerThrew(_, _, _, t):
                    errorOutcome = t.outcome
                    if mode != .none { visits = t.visits }
                case .reentrantDispatch, .faultNestingTooDeep:
                    break
                }
            }
        case .nmi:
            do {
                if mode == .none {
                    var trace: NMIDispatchTrace?
                    let end = try vmm.walkNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: entry,
                                              trace: &trace)
                    #expect(trace == nil, "the untraced path built a trace")
                    (result, registers) = ("ended early by \(end.endedEarlyBy.map { "\($0)" } ?? "-"), "
                                           + "termination \(end.termination.map { "\($0)" } ?? "-")", end.registers)
                } else {
                    let out = try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: entry)
                    (result, registers) = ("ended early by \(out.endedEarlyBy.map { "\($0)" } ?? "-"), "
                                           + "termination \(out.termination.map { "\($0)" } ?? "-")", out.registers)
                    visits = out.trace.handlers + out.trace.events
                }
            } catch {
                result = "error: \(error)"
                switch error {
                case let .registerViolation(_, t), let .serviceCallFromNMIHandler(_, _, t), let .noGuestCallout(_, t),
                     let .guestCallout(_, _, t):
                    errorOutcome = t.outcome
                    if mode != .none { visits = t.handlers + t.events }
                case .nestedNMI, .handlerThrew:
                    break
                }
            }
        case let .irq(n):
            do {
                if mode == .none {
                    var trace: IRQDispatchTrace?
                    let (r, regs) = try vmm.deliverIRQ(n, frame: &frame, frameAddress: frameAddress,
                                                       entryRegisters: entry, trace: &trace)
                    #expect(trace == nil, "the untraced path built a trace")
                    (result, registers) = ("\(r)", regs)
                } else {
                    let out = try vmm.dispatchIRQ(n, frame: &frame, frameAddress: frameAddress, entryRegisters: entry)
                    (result, registers, visits) = ("\(out.result)", out.registers, out.trace.visit.map { [$0] } ?? [])
                }
            } catch {
                result = "error: \(error)"
                switch error {
                case let .registerViolation(_, t), let .noGuestCallout(_, t), let .guestCallout(_, _, t):
                    errorOutcome = t.outcome
                    if mode != .none { visits = t.visit.map { [$0] } ?? [] }
                case .irqOutOfRange, .reentrantDispatch, .handlerThrew:
                    break
                }
            }
        }
        log.kept = []  // the callouts' behaviours hold the log
        let chains = FaultChainKind.allCases.flatMap { chain in [0x0D, 0x0E, 0x42].map { vmm.faultChain(chain, $0) } }
        let after = "reenter \(vmm.reenterCount) IF \(vmm.interruptsEnabled) active \(vmm.activeVector.map { "\($0)" } ?? "-")"
            + " running \(vmm.currentHandlerName ?? "-") calls \(vmm.currentVisitCalls.count)"
            + " pending \(vmm.pendingIRQs) chains \(chains) nmi \(vmm.nmiHandlerChain())"
        return (Observed(result: result, registers: registers, frame: frame, diagnostics: vmm.diagnostics,
                         termination: vmm.termination, debugLog: vmm.debugLog, handlerLog: log.entries,
                         errorOutcome: errorOutcome, after: after), visits)
    }

    @Test(arguments: agreementCases)
    func tracedAndUntracedDispatchAgree(_ c: AgreementCase) throws {
        let (full, fullVisits) = try Self.observe(c, .full)
        let (notable, notableVisits) = try Self.observe(c, .notable)
        let (none, noneVisits) = try Self.observe(c, .none)
        #expect(notable == full, "notable-only trace vs full trace:\n\(notable)\nvs\n\(full)")
        #expect(none == full, "no trace vs full trace:\n\(none)\nvs\n\(full)")
        #expect(noneVisits == nil)
        // The handlers really ran (every case logs at least one, or has none to run on purpose).
        #expect(!full.handlerLog.isEmpty || c.name.hasPrefix("no handler"))
        // A fault trace without `recordsTraces` keeps exactly the visits that broke a rule or
        // called a service, as the full trace has them. NMI and IRQ traces are always full.
        if case .fault = c.dispatch {
            let expected = fullVisits?.filter { !$0.violations.isEmpty || !$0.serviceCalls.isEmpty }
            #expect(notableVisits == expected)
        } else {
            #expect(notableVisits == fullVisits)
        }
    }

    /// Swift handlers for the cases: each logs what it got.
    static func logging(_ log: HandlerLog, _ name: String,
                        _ body: @escaping (inout HandlerRegisters, inout ClientRegisters, FaultHandlerContext) throws
                            -> FaultDisposition) -> FaultProc {
        { r, f, ctx in
            log.add(name, r, f)
            return try body(&r, &f, ctx)
        }
    }

    struct HandlerFailure: Error, CustomStringConvertible {
        var description: String { "the handler's table is gone" }
    }

    static let agreementCases: [AgreementCase] = faultCases + nmiCases + irqCases

    static let faultCases: [AgreementCase] = {
        var cases: [AgreementCase] = []
        for chain in FaultChainKind.allCases {
            cases.append(AgreementCase(name: "\(chain): pass on, then process with allowed changes", dispatch: .fault(chain, 0x0D)) { vmm, log in
                try vmm.hookFault(chain, 0x0D, name: "fixer", handler: logging(log, "fixer") { r, f, _ in
                    r.eax = 1; r.ebx = 2; r.ecx = 3; r.edx = 4; r.esi = 5; r.edi = 6
                    r.eflags |= EFlags.cf | EFlags.zf
                    f.eip &+= 2; f.eax = 0xFEED
                    return .processed
                })
                try vmm.hookFault(chain, 0x0D, name: "observer", handler: logging(log, "observer") { _, _, _ in .passedOn })
                try vmm.hookFault(chain, 0x0D, name: "observer2", handler: logging(log, "observer2") { _, _, _ in .passedOn })
            })
            cases.append(AgreementCase(name: "\(chain): unhandled after boot", dispatch: .fault(chain, 0x0D)) { vmm, log in
                try vmm.boot()
                try vmm.hookFault(chain, 0x0D, name: "late", handler: logging(log, "late") { _, _, _ in .passedOn })
            })
            for strict in [false, true] {
                cases.append(AgreementCase(name: "\(chain): forbidden change while processing", strict: strict,
                                           dispatch: .fault(chain, 0x0D)) { vmm, log in
                    try vmm.hookFault(chain, 0x0D, name: "bottom", handler: logging(log, "bottom") { _, _, _ in .processed })
                    try vmm.hookFault(chain, 0x0D, name: "BAD", handler: logging(log, "BAD") { r, f, _ in
                        r.ebp = 0; r.ecx = 7; r.eflags |= EFlags.df
                        f.eip &+= 1
                        return .processed
                    })
                })
                cases.append(AgreementCase(name: "\(chain): change while passing on", strict: strict,
                                           dispatch: .fault(chain, 0x0D)) { vmm, log in
                    try vmm.hookFault(chain, 0x0D, name: "bottom", handler: logging(log, "bottom") { r, _, _ in
                        r.eax &+= 1
                        return .processed
                    })
                    try vmm.hookFault(chain, 0x0D, name: "LEAKY", handler: logging(log, "LEAKY") { r, f, _ in
                        r.edi = 0xBAD; r.gs = 0
                        f.ebx = 0x1234  // the frame is not under the register rules
                        return .passedOn
                    })
                })
            }
        }
        for strict in [false, true] {
            cases.append(AgreementCase(name: "VMM: services from handlers", strict: strict, dispatch: .fault(.vmm, 0x0D)) { vmm, log in
                try vmm.hookVMMFault(0x0D, name: "writer", handler: logging(log, "writer") { r, _, ctx in
                    var s = r.serviceRegisters
                    s.esi = 0x0010_0900
                    _ = try? ctx.vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.outDebugString), registers: &s)
                    ctx.vmm.outDebugChr(0x21)
                    r.eax = ctx.vmm.getVMMReenterCount()
                    return .processed
                })
                try vmm.hookVMMFault(0x0D, name: "hooker", handler: logging(log, "hooker") { _, _, ctx in
                    _ = try? ctx.vmm.hookVMMFault(0x42, name: "late", handler: passOn)  // synchronous: reported
                    _ = ctx.vmm.getCurVMHandle()
                    let old = ctx.vmm.beginReentrantExecution()
                    _ = try? ctx.vmm.hookPMFault(0x0E, name: "ok", handler: passOn)  // allowed now
                    ctx.vmm.endReentrantExecution(old)
                    return .passedOn
                })
                try vmm.hookVMMFault(0x0D, name: "quiet", handler: logging(log, "quiet") { _, _, _ in .passedOn })
            })
        }
        cases.append(AgreementCase(name: "VMM: Fatal_Error_Handler from a handler", dispatch: .fault(.vmm, 0x0D)) { vmm, log in
            try vmm.hookVMMFault(0x0D, name: "never", handler: logging(log, "never") { _, _, _ in .processed })
            try vmm.hookVMMFault(0x0D, name: "DIE", handler: logging(log, "DIE") { r, _, ctx in
                var s = ServiceRegisters(eax: 1, esi: 0x0010_0800)
                _ = try? ctx.vmm.callService(vmmcallOperand: 0x0001_00BE, registers: &s)
                r.ecx = 9
                return .passedOn
            })
        })
        cases.append(AgreementCase(name: "VMM: a handler that throws", dispatch: .fault(.vmm, 0x0E)) { vmm, log in
            try vmm.hookVMMFault(0x0E, name: "never", handler: logging(log, "never") { _, _, _ in .processed })
            try vmm.hookVMMFault(0x0E, name: "THROWER", handler: logging(log, "THROWER") { _, f, _ in
                f.eip &+= 4
                throw HandlerFailure()
            })
            try vmm.hookVMMFault(0x0E, name: "first", handler: logging(log, "first") { _, _, _ in .passedOn })
        })
        cases.append(AgreementCase(name: "VMM: the VMM's own handler processes", dispatch: .fault(.vmm, 0x03)) { vmm, log in
            try vmm.boot()
            try vmm.hookVMMFault(0x03, name: "late", handler: logging(log, "late") { _, _, _ in .passedOn })
        })
        cases.append(AgreementCase(name: "no handler: empty chain", dispatch: .fault(.vmm, 0x0D)) { _, _ in })
        cases.append(AgreementCase(name: "PM: guest handlers through the callout", dispatch: .fault(.pm, 0x0D)) { vmm, log in
            let callout = MockCallout()
            vmm.guestCallout = callout
            vmm.guestHandlerNames[FaultHandlerAddress(0x0010_0300)] = "GuestTop"
            try vmm.hookPMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0400))
            try vmm.hookPMFault(0x0D, name: "SwiftMid", handler: logging(log, "SwiftMid") { _, _, _ in .passedOn })
            try vmm.hookPMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0300))
            callout.behaviour = { call, frame in
                log.add("guest \(call.handler) \(call.role) previous \(call.previous.map { "\($0)" } ?? "-")",
                        call.registers, frame)
                guard call.handler == FaultHandlerAddress(0x0010_0400) else {
                    return GuestFaultHandlerReturn(disposition: .passedOn, registers: call.registers)
                }
                frame.eip &+= 2
                var r = call.registers
                r.eax = 0x600D
                r.ebp = 0  // breaks the rules
                return GuestFaultHandlerReturn(disposition: .processed, registers: r)
            }
            log.kept.append(callout)
        })
        cases.append(AgreementCase(name: "V86: guest handler without a callout", dispatch: .fault(.v86, 0x0D)) { vmm, log in
            try vmm.hookV86Fault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0500))
            try vmm.hookV86Fault(0x0D, name: "first", handler: logging(log, "first") { _, _, _ in .passedOn })
        })
        return cases
    }()

    static let nmiCases: [AgreementCase] = {
        var cases: [AgreementCase] = []
        for strict in [false, true] {
            cases.append(AgreementCase(name: "NMI: chain, default handler and events", strict: strict, dispatch: .nmi) { vmm, log in
                try vmm.installNMIHandler(name: "H1", handler: logging(log, "H1") { _, _, _ in .passedOn })
                try vmm.installNMIHandler(name: "H2", handler: logging(log, "H2") { _, f, _ in f.ecx = 0x77; return .passedOn })
                try vmm.hookNMIEvent(name: "EV1") { r, f, _ in log.add("EV1", r, f); r.eax = 1; f.edx = 0x55 }
                try vmm.hookNMIEvent(name: "EV2") { r, f, _ in log.add("EV2", r, f); r.ebp = 0 }  // breaks the rules
                try vmm.hookNMIEvent(name: "EV3") { r, f, _ in log.add("EV3", r, f) }
            })
            cases.append(AgreementCase(name: "NMI: a handler calls a service", strict: strict, dispatch: .nmi) { vmm, log in
                try vmm.installNMIHandler(name: "LOWER", handler: logging(log, "LOWER") { _, _, _ in .passedOn })
                try vmm.installNMIHandler(name: "CHATTY", handler: logging(log, "CHATTY") { _, _, ctx in
                    _ = ctx.vmm.getCurVMHandle()
                    return .passedOn
                })
                try vmm.hookNMIEvent(name: "EV") { r, f, vmm in log.add("EV", r, f); _ = vmm.getSysVMHandle() }
            })
            cases.append(AgreementCase(name: "NMI: a handler breaks the rules", strict: strict, dispatch: .nmi) { vmm, log in
                try vmm.installNMIHandler(name: "LOWER", handler: logging(log, "LOWER") { _, _, _ in .passedOn })
                try vmm.installNMIHandler(name: "BAD", handler: logging(log, "BAD") { r, _, _ in r.eax = 5; return .passedOn })
            })
        }
        cases.append(AgreementCase(name: "NMI: a handler returns instead of passing on", dispatch: .nmi) { vmm, log in
            try vmm.installNMIHandler(name: "LOWER", handler: logging(log, "LOWER") { _, _, _ in .passedOn })
            try vmm.installNMIHandler(name: "RETURNS", handler: logging(log, "RETURNS") { r, _, _ in r.eax = 3; return .processed })
            try vmm.hookNMIEvent(name: "EV") { r, f, _ in log.add("EV", r, f) }
        })
        cases.append(AgreementCase(name: "NMI: an event calls Fatal_Error_Handler", dispatch: .nmi) { vmm, log in
            try vmm.installNMIHandler(name: "H", handler: logging(log, "H") { _, _, _ in .passedOn })
            try vmm.hookNMIEvent(name: "DIE") { r, f, vmm in log.add("DIE", r, f); vmm.fatalErrorHandler(message: "NMI") }
            try vmm.hookNMIEvent(name: "NEVER") { r, f, _ in log.add("NEVER", r, f) }
        })
        cases.append(AgreementCase(name: "NMI: a handler that throws", dispatch: .nmi) { vmm, log in
            try vmm.installNMIHandler(name: "THROWER", handler: logging(log, "THROWER") { _, _, _ in throw HandlerFailure() })
        })
        cases.append(AgreementCase(name: "NMI: guest handler and event through the callout", dispatch: .nmi) { vmm, log in
            let callout = MockCallout()
            vmm.guestCallout = callout
            log.kept.append(callout)
            try vmm.installNMIHandler(name: "LOWER", handler: logging(log, "LOWER") { _, _, _ in .passedOn })
            try vmm.setNMIHandlerAddr(FaultHandlerAddress(0x0010_0600))
            try vmm.hookNMIEvent(procedureAt: FaultHandlerAddress(0x0010_0700))
            callout.behaviour = { call, frame in
                log.add("guest \(call.handler) \(call.role)", call.registers, frame)
                var r = call.registers
                if call.role == .nmiEvent { r.esi = 0x99; frame.eip &+= 1 }
                return GuestFaultHandlerReturn(disposition: call.role == .nmiEvent ? .processed : .passedOn, registers: r)
            }
        })
        return cases
    }()

    static let irqCases: [AgreementCase] = {
        var cases: [AgreementCase] = []
        for strict in [false, true] {
            cases.append(AgreementCase(name: "IRQ: processed with allowed and forbidden changes", strict: strict,
                                       dispatch: .irq(nil)) { vmm, log in
                try vmm.virtualizeIRQ(irq: 4, name: "VCD", handler: logging(log, "VCD") { r, f, ctx in
                    try? ctx.vmm.raiseIRQ(9)
                    _ = ctx.vmm.getCurVMHandle()
                    r.ecx = 0x1234; r.ss = 0
                    f.eax = 0x99
                    return .processed
                })
                try vmm.raiseIRQ(4)
            })
        }
        cases.append(AgreementCase(name: "IRQ: a handler answers CF set", dispatch: .irq(3)) { vmm, log in
            try vmm.virtualizeIRQ(irq: 3, name: "COM2", handler: logging(log, "COM2") { r, _, _ in r.eax = 0; return .passedOn })
            try vmm.raiseIRQ(3)
        })
        cases.append(AgreementCase(name: "IRQ: guest handler, CF set", dispatch: .irq(nil)) { vmm, log in
            let callout = MockCallout()
            vmm.guestCallout = callout
            log.kept.append(callout)
            try vmm.virtualizeIRQ(irq: 14, name: "GIDE", handlerAt: FaultHandlerAddress(0x0010_0C00))
            callout.behaviour = { call, frame in
                log.add("guest \(call.role)", call.registers, frame)
                var r = call.registers
                r.eflags |= EFlags.cf
                return GuestFaultHandlerReturn(disposition: .processed, registers: r)
            }
            try vmm.raiseIRQ(14)
        })
        cases.append(AgreementCase(name: "no handler: unvirtualized IRQ", dispatch: .irq(nil)) { vmm, _ in try vmm.raiseIRQ(9) })
        cases.append(AgreementCase(name: "no handler: spurious IRQ", dispatch: .irq(5)) { _, _ in })
        return cases
    }()
}
