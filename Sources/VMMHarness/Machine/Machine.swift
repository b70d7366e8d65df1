import Foundation

/// One guest machine: guest memory holding the runtime and the user image, an execution backend,
/// the device bus, and the one run loop (`run(until:)`) that runs the backend and carries out
/// what each exit means (`ExitHandling`). The top-level run and every guest procedure the host
/// calls (`callGuest`) go through the same loop.
public final class Machine {
    public let memory: GuestMemory
    public let backend: any ExecutionBackend
    public let backendReport: BackendReport
    public let image: GuestImage
    public let layout: RuntimeImage.Layout
    public let options: MachineOptions
    /// The I/O port and MMIO bus (the runtime's ports are attached; add devices before `run()`).
    public let bus: DeviceBus
    /// The debug console on port E9h.
    public let console = DebugConsole()
    /// Reads, writes back and resumes fault frames.
    public let frames: FrameCodec
    /// Decides what faults mean (the VMM). Without one, every fault ends the run unhandled.
    @exclusivity(unchecked) public var faultHandling: (any FaultHandling)?
    /// The virtual PIC: pending hardware interrupts are delivered through the IDT when IF allows.
    @exclusivity(unchecked) public var interruptController: (any InterruptController)?
    /// Adds the handler's part (e.g. the VMM's summary) to the report when the run ends.
    public var reportContributor: ((inout RunReport) -> Void)?

    // The loop's state is touched on every exit, on one thread, with no overlapping access: the
    // runtime's dynamic exclusivity checks would only cost time.
    @exclusivity(unchecked) var report: RunReport
    @exclusivity(unchecked) var lastFault: (vector: UInt8, frame: ClientRegisters)?
    @exclusivity(unchecked) var stormCount = 0
    /// Set when the run has ended (it may end during the VMM's boot, in a guest control procedure).
    @exclusivity(unchecked) public private(set) var finished: (reason: ExitReason, message: String)?
    @exclusivity(unchecked) var startTime: UInt64?
    @exclusivity(unchecked) var clockStarted = false
    let watchdog = Watchdog()
    /// Guest procedures the host is running now (nested when one calls a service that runs another).
    @exclusivity(unchecked) var guestCallDepth = 0
    /// The most guest calls that may be nested.
    public static let maximumGuestCallDepth = 8
    /// The breakpoint list handed to the backend for guest calls, kept so setting one allocates nothing.
    @exclusivity(unchecked) var breakpointList: [UInt32] = []
    /// The breakpoint set on the backend now (nil: none); not to be trusted after a failed change.
    @exclusivity(unchecked) var armedBreakpoint: UInt32?
    @exclusivity(unchecked) var armedBreakpointKnown = true

    /// Loads the runtime and `image` into `memory` and sets the initial CPU state on `backend`.
    public init(image: GuestImage, memory: GuestMemory, backend: any ExecutionBackend, backendReport: BackendReport,
                options: MachineOptions = MachineOptions()) throws(HarnessError) {
        try options.validate()
        self.memory = memory
        self.backend = backend
        self.backendReport = backendReport
        self.image = image
        self.options = options
        self.frames = FrameCodec(memory: memory)
        self.layout = try RuntimeImage.layout()
        self.bus = DeviceBus.runtime(console: console)
        guard image.base >= MemoryMap.imageBase, memory.contains(UInt64(image.base), count: image.bytes.count) else {
            throw .badFile(path: image.name, reason: "does not fit guest memory at \(hex(image.base))")
        }
        do {
            try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
            try memory.writeBytes(image.base, image.bytes)
            // Host area: every host-handler slot holds `OUT F1h; HLT`, so a guest jump to a Swift
            // or VMM handler's address exits to the host; the guest-call return address holds
            // `OUT F2h; HLT`.
            var slot = MemoryMap.hostAreaBase
            while slot < MemoryMap.guestCallReturn {
                try memory.writeBytes(slot, [0xE6, UInt8(Ports.hostHandlerEntry), 0xF4])
                slot += 16
            }
            try memory.writeBytes(MemoryMap.guestCallReturn, [0xE6, UInt8(Ports.guestCallReturn), 0xF4])
        } catch { throw .memory(error) }
        try backend.writeState(Machine.initialState(entry: image.entry, layout: layout))
        report = RunReport(image: image.name, backend: backendReport,
                           exit: .init(reason: .halt, message: "", exitCode: 0), finalRegisters: nil,
                           statistics: .init(instructions: 0, backendRuns: 0, assists: 0, wallSeconds: 0))
    }

    /// The state every image starts in: ring 0, flat 32-bit segments (CS 28h, data 30h), the
    /// runtime's GDT, IDT and TSS loaded, ESP = `MemoryMap.ring0StackTop`, interrupts disabled.
    public static func initialState(entry: UInt32, layout: RuntimeImage.Layout) -> CPUState {
        var s = CPUState()
        s.cr0 = CR0.pe | CR0.et
        s.cs = .flatCode(selector: Selectors.ring0Code, dpl: 0)
        let data = SegmentRegister.flatData(selector: Selectors.ring0Data, dpl: 0)
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.gdtr = layout.gdt
        s.idtr = layout.idt
        s.tr = SegmentRegister(selector: Selectors.tss, base: layout.tssBase, limit: layout.tssLimit, type: 0xB,
                               isCodeOrData: false, dpl: 0, present: true)
        s.ldtr = SegmentRegister(selector: 0, type: 0x2, present: true, unusable: true)
        s.esp = MemoryMap.ring0StackTop
        s.eip = entry
        s.eflags = EFlags.reserved1
        return s
    }

    // MARK: running

    /// Runs the guest until it halts, a fault goes unhandled, the timeout expires or something
    /// breaks, and returns the report.
    public func run() -> RunReport {
        startClock()
        let start = startTime ?? DispatchTime.now().uptimeNanoseconds
        defer { watchdog.cancel() }
        // At top level the loop ends by `finish`; a backend error it throws (reading the state
        // for a host-area exit) ends the run too.
        do { _ = try run(until: .runEnds) } catch { finish(.backendError, error.description) }
        let end = DispatchTime.now().uptimeNanoseconds
        do {
            report.finalRegisters = RegisterSnapshot(try backend.readState())
        } catch {
            report.notes.append("final registers unavailable: \(error)")
        }
        let (reason, message) = finished ?? (.halt, "")
        report.exit = .init(reason: reason, message: message, exitCode: reason.exitCode)
        report.console = console.output
        reportContributor?(&report)
        // VMMcalls made by guest handlers are recorded before the fault they serve: list in order.
        report.faults.sort { $0.index < $1.index }
        let st = backend.statistics
        report.statistics = .init(instructions: st.instructions, backendRuns: st.runs, assists: st.assists,
                                  wallSeconds: Double(end &- start) / 1e9)
        return report
    }

    /// What `run(until:)` runs to.
    public enum RunGoal: Sendable, Equatable {
        /// The end of the run (HLT, an unhandled fault, the timeout ...).
        case runEnds
        /// The end of a guest procedure the host called (`callGuest`): its near RET to
        /// `MemoryMap.guestCallReturn`, or its jump to `previous` (a guest address, caught with a
        /// breakpoint, or a host-handler address).
        case procedureEnds(previous: UInt32?)
    }

    /// How a guest procedure the host called ended.
    public enum GuestCallEnd: Sendable, Equatable {
        /// It returned with a near RET (to `MemoryMap.guestCallReturn`).
        case returned
        /// It jumped to `previous` (a fault handler passing the fault on).
        case reachedPrevious
    }

    /// The run loop: runs the backend, turns each exit into an action (`ExitHandling`) and
    /// carries it out (`perform`), until `goal`. For `.runEnds` it returns nil once the run has
    /// finished. For `.procedureEnds` it returns how the procedure ended and the state there (EIP
    /// at the return address or at `previous`, ESP as after the return); anything that ends the
    /// procedure otherwise — a fault other than a VMMcall, HLT, the run's end, a jump elsewhere
    /// into the host area — throws, naming `purpose`.
    public func run(until goal: RunGoal, purpose makePurpose: @autoclosure () -> String = "the guest")
        throws(HarnessError) -> (end: GuestCallEnd, state: CPUState)?
    {
        switch goal {
        case .runEnds:
            _ = try loop(goal, purpose: makePurpose())
            return nil
        case let .procedureEnds(previous):
            guard let end = try runToProcedureEnd(previous: previous, purpose: makePurpose()) else { return nil }
            return (end, procedureEndState)
        }
    }

    /// `run(until: .procedureEnds(previous:))` with the end state left in `procedureEndState`.
    func runToProcedureEnd(previous: UInt32?, purpose: @autoclosure () -> String) throws(HarnessError) -> GuestCallEnd? {
        try loop(.procedureEnds(previous: previous), purpose: purpose())
    }

    /// The loop behind `run(until:)`.
    private func loop(_ goal: RunGoal, purpose makePurpose: @autoclosure () -> String) throws(HarnessError) -> GuestCallEnd? {
        // Built only for an error message: this is on every guest handler's path.
        var purpose: String { makePurpose() }
        let inCall: Bool
        switch goal {
        case .runEnds: inCall = false
        case .procedureEnds: inCall = true
        }
        // A procedure called after the run ended (the VMM's shutdown messages) still runs; only
        // what ends it during the call counts.
        let endedBefore = finished != nil
        while true {
            if !inCall, finished != nil { return nil }
            guard let exit = runOnce(inCall: inCall) else {
                if inCall { throw .guestProtocol("\(purpose): \(finished?.message ?? "stopped")") }
                return nil
            }
            if inCall, let deadline = callDeadline, DispatchTime.now().uptimeNanoseconds >= deadline {
                throw .guestProtocol("\(purpose) did not return within \(options.timeout ?? 10) s")
            }
            if let end = try perform(ExitHandling.action(for: exit, bus: bus), goal: goal, purpose: purpose) {
                return end
            }
            if inCall {
                if !endedBefore, let f = finished { throw .guestProtocol("\(purpose): \(f.message)") }
            } else if finished == nil, interruptWindowRequested || interruptController?.pendingVector != nil {
                deliverPendingInterrupt()
            }
        }
    }

    /// Carries out one exit outside any guest call, as the top-level run does (for callers that
    /// drive the backend themselves, e.g. a fuzzer with its own budget).
    public func handle(_ exit: GuestExit) {
        do {
            _ = try perform(ExitHandling.action(for: exit, bus: bus), goal: .runEnds, purpose: "the guest")
        } catch {
            finish(.backendError, error.description)
        }
        if finished == nil, interruptWindowRequested || interruptController?.pendingVector != nil { deliverPendingInterrupt() }
    }

    /// Carries out `action` for `goal`: how the called procedure ended, when it did (its state is
    /// then in `procedureEndState`), else nil. (No CPU state in the result: this runs on every exit,
    /// and an optional tuple holding one was copied each time.)
    func perform(_ action: ExitAction, goal: RunGoal, purpose: @autoclosure () -> String)
        throws(HarnessError) -> GuestCallEnd?
    {
        let inCall: Bool
        let previous: UInt32?
        switch goal {
        case .runEnds: inCall = false; previous = nil
        case let .procedureEnds(p): inCall = true; previous = p
        }
        switch action {
        case .resume:
            return nil
        case let .answerPortIn(value):
            do { try backend.completePortIn(value: value) } catch {
                if inCall { throw error }
                finish(.backendError, error.description)
            }
            return nil
        case let .dispatchFault(vector):
            // Inside a called procedure too: a VMMcall is served, and a fault the procedure
            // raises (a handler that faults) is dispatched through the chains with its own frame
            // on the procedure's stack; when it is processed the procedure continues.
            handleFault(vector: vector)
            return nil
        case .runtimeCall:
            handleRuntimeCall()
            return nil
        case let .hostAreaReached(port):
            let st = try backend.readState()
            let address = st.eip &- 2
            guard inCall else {
                finish(.invalidResume, "the guest reached the host address \(hex(address)) outside a call from the host")
                return nil
            }
            if port == Ports.guestCallReturn {
                guard address == MemoryMap.guestCallReturn else { return nil }
                procedureEndState = st
                procedureEndState.eip = MemoryMap.guestCallReturn
                return .returned
            }
            guard let previous, address == previous else {
                throw .guestProtocol("\(purpose()) jumped to the host handler at \(hex(address)), which is not its previous handler")
            }
            procedureEndState = st
            procedureEndState.eip = address
            procedureEndState.esp &+= 4   // the return address of the call is still on the stack
            return .reachedPrevious
        case let .breakpoint(address):
            guard inCall else {
                finish(.backendError, "unexpected breakpoint at \(hex(address))")
                return nil
            }
            guard let previous, address == previous else {
                throw .guestProtocol("\(purpose()): unexpected breakpoint at \(hex(address))")
            }
            procedureEndState = try backend.readState()
            procedureEndState.esp &+= 4
            return .reachedPrevious
        case let .unclaimedMMIO(address, isWrite, length):
            let at = (try? backend.readState()).map { " at EIP \(hex($0.eip))" } ?? ""
            finish(.mmio, "the guest \(isWrite ? "wrote" : "read") \(length) byte(s) at guest-physical \(hex(address, width: 8)), where there is no memory\(at)")
            return nil
        case let .finish(reason, message):
            if inCall && reason == .halt { throw .guestProtocol("\(purpose()) executed HLT") }
            finish(reason, message)
            return nil
        }
    }

    /// One backend run; nil (with the run finished) on a backend error or when the time is up.
    func runOnce(inCall: Bool) -> GuestExit? {
        let exit: GuestExit
        do {
            // Outside guest calls no breakpoint may stay armed (see `callGuest`).
            if !inCall && (armedBreakpoint != nil || !armedBreakpointKnown) { try arm(nil) }
            exit = try backend.run(instructionBudget: options.sliceInstructions)
        } catch {
            finish(.backendError, error.description)
            return nil
        }
        // Checked on every exit, so a guest that exits often (ports, faults) cannot outlive it either.
        if clockStarted, watchdog.expired {
            finish(.timeout, "the run did not finish within \(options.timeout ?? 0) s")
            return nil
        }
        return exit
    }

    /// Starts the timeout clock (at the first guest code run: the VMM's boot or `run()`).
    func startClock() {
        guard startTime == nil else { return }
        startTime = DispatchTime.now().uptimeNanoseconds
        if let ns = options.timeoutNanoseconds {
            clockStarted = true
            // Weak: the watchdog thread outlives `cancel()` by a moment, and a strong capture
            // would keep the backend (and its descriptors) alive on that thread.
            let kicker = backend.kicker
            watchdog.arm(afterNanoseconds: ns) { [weak kicker] in kicker?.kick() }
        }
    }

    /// Counts what may have changed the vCPU's system state during a fault's dispatch: guest
    /// procedures that ended normally and host writes (`noteSystemStateChanged`). A fault resumes
    /// from the vCPU's state read anew when it moved, from the stub's state otherwise.
    @exclusivity(unchecked) var systemStateGeneration: UInt64 = 0

    /// Tells the machine that host code changed the vCPU's system registers while a fault is
    /// dispatched (the resume keeps them).
    public func noteSystemStateChanged() { systemStateGeneration &+= 1 }

    /// Set while the exit of a re-run #UD instruction is handled (see `handleFault`).
    @exclusivity(unchecked) var reexaminingUndefinedOpcode = false

    /// Whether the backend has been asked to stop at the next interrupt window.
    @exclusivity(unchecked) var interruptWindowRequested = false

    /// The state at the end of the called procedure `perform` saw end.
    @exclusivity(unchecked) var procedureEndState = CPUState()

    /// The deadline of a guest call made after the run ended (nil inside the run, which has its own).
    @exclusivity(unchecked) var callDeadline: UInt64?

    /// Ends the run (the first reason wins).
    func finish(_ reason: ExitReason, _ message: String) {
        if finished == nil { finished = (reason, message) }
    }

    /// Records that a guest procedure the host called failed outside the run loop (during boot).
    /// A timeout there has already ended the run; other failures end it as a handler error.
    public func noteGuestCallFailure(_ message: String) {
        if finished == nil {
            finish(.handlerError, message)
        } else {
            report.notes.append(message)
        }
    }

    /// Notes added after `run()` returned its report (shutdown messages), for the caller to merge.
    public var lateNotes: [String] { report.notes }

    /// Sets the backend's breakpoint to `address` (nil: none) unless it is known to be that already.
    func arm(_ address: UInt32?) throws(HarnessError) {
        guard !armedBreakpointKnown || address != armedBreakpoint else { return }
        breakpointList.removeAll(keepingCapacity: true)
        if let address { breakpointList.append(address) }
        armedBreakpointKnown = false
        try backend.setBreakpoints(breakpointList)
        armedBreakpoint = address
        armedBreakpointKnown = true
    }
}
