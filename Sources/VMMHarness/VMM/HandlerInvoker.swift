/// How much of a handler's visit to record for the trace.
enum VisitRecording {
    /// Nothing (the untraced path: no trace value exists).
    case none
    /// Only visits worth reporting: a rule broken or a service called.
    case notable
    /// Every visit.
    case all
}

/// What one handler did (its registers are left in the caller's `registers`).
struct HandlerRun {
    /// As the role reads its end (an NMI event always `.processed`; an IRQ handler's guest code
    /// by its carry flag).
    var disposition: FaultDisposition
    /// The register rules it broke (also appended to `diagnostics`).
    var violations: [RegisterViolation]
    /// Whether it called Fatal_Error_Handler (`termination` holds the report).
    var terminated: Bool
}

/// Why a handler could not be run; each dispatch turns it into its own error with its trace.
enum HandlerCallError: Error {
    /// A Swift handler threw; the error's description.
    case threw(String)
    /// Guest code with no `GuestFaultCallout` to run it.
    case noGuestCallout(FaultHandlerAddress)
    /// The guest callout failed.
    case guestCallout(HarnessError, FaultHandlerAddress)
}

/// What entering a handler context changes, to restore on leaving. Plain values, so saving and
/// restoring it costs no retain (the interrupted handler's service calls, which only an NMI can
/// interrupt, are kept by the NMI walk).
struct SavedDispatchState {
    var vector: UInt8?
    var record: Int?
    var interrupts: Bool
    var count: UInt32
    var depth: Int
}

/// The one way the VMM runs a handler: fault chains, NMI handlers, NMI events and IRQ handlers
/// all go through `runHandler`.
extension VirtualMachineManager {
    /// The registers a handler is called with (`call [FaultProc]`): `entry` with EBX = current VM,
    /// EBP = the frame's address, IF clear.
    func callRegisters(_ entry: HandlerRegisters, frameAddress: UInt32) -> HandlerRegisters {
        var r = entry
        r.ebx = currentVM
        r.ebp = frameAddress
        r.eflags = (r.eflags & ~EFlags.if) | EFlags.reserved1
        return r
    }

    /// Enters the state in which handlers run: `vector` active, interrupts disabled, the reentrancy
    /// count raised by one. Returns what to restore (an NMI may arrive inside a fault handler).
    @inline(__always)
    func enterHandlerContext(vector: UInt8) -> SavedDispatchState {
        let saved = SavedDispatchState(vector: activeVector, record: currentHandlerRecord,
                                       interrupts: interruptsEnabled, count: reenterCount, depth: reentrantDepth)
        activeVector = vector
        interruptsEnabled = false
        reenterCount += 1
        return saved
    }

    /// Leaves it again (the `defer` of every dispatch).
    @inline(__always)
    func leaveHandlerContext(_ saved: SavedDispatchState) {
        activeVector = saved.vector
        currentHandlerRecord = saved.record
        if !currentVisitCalls.isEmpty { currentVisitCalls = [] }
        interruptsEnabled = saved.interrupts
        reenterCount = saved.count
        reentrantDepth = saved.depth
    }

    /// Name of the handler running now, for diagnostics ("NAME at ADDRESS", "NMI handler NAME at
    /// ADDRESS", ...). Built only when asked for: dispatch records the running record's index
    /// rather than formatting a string per visit.
    var currentHandlerName: String? {
        guard let i = currentHandlerRecord, store.records.indices.contains(i) else { return nil }
        return store.records[i].label
    }

    /// Runs the handler of record `index` once, as its role says: a Swift closure with `context`
    /// (its own address and previous filled in), the VMM's own handler, or guest code through
    /// `guestCallout`. Collects its service calls, checks the register rules (reported in
    /// `diagnostics`), notes Fatal_Error_Handler, and hands the visit to `record` when `recording`
    /// asks for it.
    ///
    /// - Parameters:
    ///   - registers: the registers it is called with (see `callRegisters`); on return, the
    ///     registers it left.
    ///   - context: one context for a whole dispatch: making one per visit retained and released
    ///     the VMM every time.
    ///
    /// The caller decides what the run means for its dispatch (next handler, end, strict errors).
    /// Nothing here allocates or retains on the untraced path beyond the handler call itself.
    ///
    /// Transparent (inlined before optimization) rather than `@inline(__always)`: inlined late, the
    /// walk kept a retain of the VMM for its one `FaultHandlerContext`, one retain/release pair
    /// per dispatch that the chain walk written in one piece did not have.
    @_transparent
    func runHandler(_ index: Int, role: HandlerRole, registers: inout HandlerRegisters,
                    frame: inout ClientRegisters, frameAddress: UInt32, context: inout FaultHandlerContext,
                    recording: VisitRecording, record: (FaultHandlerVisit) -> Void) throws(HandlerCallError)
        -> HandlerRun
    {
        // The record's fields are read where they are needed rather than copying the whole record
        // (its name and kind hold references: a copy per visit costs retains).
        let address = store.records[index].address
        let previous = store.records[index].previousAddress
        let before = registers
        let frameBefore: ClientRegisters? = recording == .none ? nil : frame
        currentHandlerRecord = index
        if !currentVisitCalls.isEmpty { currentVisitCalls = [] }
        let terminationsBefore = terminationCount
        // NMI handlers may call no service at all (`note` reports any).
        let isNMIHandler: Bool
        if case .nmiHandler = role { isNMIHandler = true } else { isNMIHandler = false }
        if isNMIHandler {
            nmiServiceViolation = nil
            nmiHandlerRunning = true
        }
        defer { if isNMIHandler { nmiHandlerRunning = false } }

        var disposition: FaultDisposition
        // Switched on in place: binding a copy of the kind first cost a second retain of the
        // handler's closure on every visit.
        switch store.records[index].kind {
        case let .host(proc):
            context.address = address
            context.previous = previous
            do {
                disposition = try proc(&registers, &frame, context)
            } catch {
                throw .threw("\(error)")
            }
        case .vmmDefault:
            // The VMM's own fault handlers follow their policy; in the NMI chain it is the default
            // handler, which does nothing and ends the chain.
            if case let .fault(chain) = role {
                disposition = ownPolicy(chain).action(context.vector, &frame) ? .processed : .passedOn
            } else {
                disposition = .processed
            }
        case let .guest(a):
            guard let callout = guestCallout else { throw .noGuestCallout(a) }
            let call = GuestFaultHandlerCall(vector: context.vector, handler: a, previous: previous, registers: before,
                                             frameAddress: frameAddress, role: role.guestRole)
            do {
                let r = try callout.callGuestFaultHandler(call, frame: &frame)
                registers = r.registers
                disposition = r.disposition
            } catch {
                throw .guestCallout(error, a)
            }
            // A VID_Hw_Int_Proc answers with its carry flag.
            if case .irq = role { disposition = registers.eflags & EFlags.cf == 0 ? .processed : .passedOn }
        }
        // Events and IRQ handlers return: they are held to the processing rules whatever they answer.
        let ruleDisposition: FaultDisposition
        switch role {
        case .fault, .nmiHandler:
            ruleDisposition = disposition
        case .nmiEvent:
            disposition = .processed
            ruleDisposition = .processed
        case .irq:
            ruleDisposition = .processed
        }

        // Nothing changed is the common case (every handler that passes on): no call for it.
        let violations = before.sameValues(as: registers) ? [] :
            RegisterRules.check(before: before, after: registers, disposition: ruleDisposition,
                                name: store.records[index].name, address: address)
        if !violations.isEmpty { diagnostics.append(contentsOf: violations.map { .registerViolation($0) }) }

        if let frameBefore, recording == .all || !violations.isEmpty || !currentVisitCalls.isEmpty {
            record(FaultHandlerVisit(
                address: address, name: store.records[index].name, tier: store.records[index].tier,
                kind: store.records[index].kind.label, disposition: disposition,
                registerChanges: ValueChange.diff(before.namedValues, registers.namedValues),
                frameChanges: ValueChange.diff(frameBefore.namedFields, frame.namedFields),
                violations: violations, serviceCalls: currentVisitCalls))
        }
        return HandlerRun(disposition: disposition, violations: violations,
                          terminated: terminationCount != terminationsBefore)
    }
}

extension HandlerRole {
    /// What the guest-call port is told the procedure is.
    var guestRole: GuestHandlerRole {
        switch self {
        case let .fault(chain): return .fault(chain)
        case .nmiHandler: return .nmiHandler
        case .nmiEvent: return .nmiEvent
        case let .irq(n): return .irq(n)
        }
    }
}
