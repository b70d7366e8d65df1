import Foundation
import Synchronization

/// Options for one run.
public struct MachineOptions: Sendable {
    /// Guest memory size in bytes.
    public var memorySize = MemoryMap.defaultMemorySize
    /// Wall-clock limit for the run in seconds (nil: none).
    public var timeout: Double? = 10
    /// Faults listed individually in the report (the rest are only counted).
    public var maxRecordedFaults = 1000
    /// The same fault with identical registers this many times in a row ends the run as a fault storm.
    public var faultStormLimit = 64
    /// Interpreter instructions per slice between clock checks.
    public var sliceInstructions = 1 << 16
    /// Record every frame field in each fault record.
    public var recordFrames = true
    public init() {}
}

/// One guest machine: guest memory holding the runtime and the user image, an execution backend,
/// and the loop that runs it and turns every exit into the next step.
///
/// The loop only runs the backend; `handle(_:)` decides what each exit means, so it can be driven
/// with synthetic exits from a test backend.
public final class Machine {
    public let memory: GuestMemory
    public let backend: any ExecutionBackend
    public let backendReport: BackendReport
    public let image: GuestImage
    public let layout: RuntimeImage.Layout
    public let options: MachineOptions
    /// Decides what faults mean (the VMM). Without one, every fault ends the run unhandled.
    public var faultHandling: (any FaultHandling)?
    /// Finishes instructions KVM cannot emulate.
    public var assist: (any InstructionAssist)?
    /// The virtual PIC: pending hardware interrupts are delivered through the IDT when IF allows.
    public var interruptController: (any InterruptController)?

    // The loop's state is touched on every exit, on one thread, with no overlapping access: the
    // runtime's dynamic exclusivity checks would only cost time.
    @exclusivity(unchecked) private var report: RunReport
    @exclusivity(unchecked) private var lastFault: (vector: UInt8, frame: ClientRegisters)?
    @exclusivity(unchecked) private var stormCount = 0
    /// Set when the run has ended (it may end during the VMM's boot, in a guest control procedure).
    @exclusivity(unchecked) public private(set) var finished: (reason: ExitReason, message: String)?
    @exclusivity(unchecked) private var startTime: UInt64?
    @exclusivity(unchecked) private var deadline: UInt64?
    private let watchdog = Watchdog()
    @exclusivity(unchecked) private var guestCallDepth = 0
    /// The breakpoint list handed to the backend for guest calls, kept so setting one allocates nothing.
    @exclusivity(unchecked) private var breakpointList: [UInt32] = []
    /// The breakpoint set on the backend now (nil: none); not to be trusted after a failed change.
    @exclusivity(unchecked) private var armedBreakpoint: UInt32?
    @exclusivity(unchecked) private var armedBreakpointKnown = true

    /// Sets the backend's breakpoint to `address` (nil: none) unless it is known to be that already.
    private func arm(_ address: UInt32?) throws(HarnessError) {
        guard !armedBreakpointKnown || address != armedBreakpoint else { return }
        breakpointList.removeAll(keepingCapacity: true)
        if let address { breakpointList.append(address) }
        armedBreakpointKnown = false
        try backend.setBreakpoints(breakpointList)
        armedBreakpoint = address
        armedBreakpointKnown = true
    }

    /// Loads the runtime and `image` into `memory` and sets the initial CPU state on `backend`.
    public init(image: GuestImage, memory: GuestMemory, backend: any ExecutionBackend, backendReport: BackendReport,
                options: MachineOptions = MachineOptions()) throws(HarnessError) {
        self.memory = memory
        self.backend = backend
        self.backendReport = backendReport
        self.image = image
        self.options = options
        self.layout = try RuntimeImage.layout()
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

    /// Runs the guest until it halts, a fault goes unhandled, the timeout expires or something breaks.
    public func run() -> RunReport {
        startClock()
        let start = startTime ?? DispatchTime.now().uptimeNanoseconds
        defer { watchdog.cancel() }
        while finished == nil {
            guard let exit = runOnce() else { break }
            handle(exit)
            if interruptController?.pendingVector != nil { deliverPendingInterrupt() }
        }
        let end = DispatchTime.now().uptimeNanoseconds
        if let s = try? backend.readState() { report.finalRegisters = RegisterSnapshot(s) }
        let (reason, message) = finished ?? (.halt, "")
        report.exit = .init(reason: reason, message: message, exitCode: reason.exitCode)
        if let v = faultHandling as? VMMFaultHandling { report.vmm = v.summary }
        // VMMcalls made by guest handlers are recorded before the fault they serve: list in order.
        report.faults.sort { $0.index < $1.index }
        let st = backend.statistics
        report.statistics = .init(instructions: st.instructions, backendRuns: st.runs, assists: st.assists,
                                  wallSeconds: Double(end - start) / 1e9)
        return report
    }

    /// Starts the timeout clock (at the first guest code run: the VMM's boot or `run()`).
    private func startClock() {
        guard startTime == nil else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        startTime = now
        deadline = options.timeout.map { now + UInt64($0 * 1e9) }
        if let timeout = options.timeout {
            // Weak: the watchdog thread outlives `cancel()` by a moment, and a strong capture
            // would close the backend's descriptors on that thread, after the caller dropped it.
            let kvm = backend as? KVMBackend
            watchdog.arm(after: timeout) { [weak kvm] in kvm?.kick() }
        }
    }

    /// One backend run; nil (with the run finished) on a backend error or when the time is up.
    private func runOnce() -> GuestExit? {
        let exit: GuestExit
        do {
            // Outside guest calls no breakpoint may stay armed (see `callGuest`).
            if guestCallDepth == 0 && (armedBreakpoint != nil || !armedBreakpointKnown) { try arm(nil) }
            exit = try backend.run(instructionBudget: options.sliceInstructions)
        } catch {
            finish(.backendError, error.description)
            return nil
        }
        // Checked on every exit, so a guest that exits often (ports, faults) cannot outlive it either.
        if deadline != nil, watchdog.expired {
            finish(.timeout, "the run did not finish within \(options.timeout ?? 0) s")
            return nil
        }
        return exit
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

    /// Ends the run (the first reason wins).
    func finish(_ reason: ExitReason, _ message: String) {
        if finished == nil { finished = (reason, message) }
    }

    /// Decides what one exit means and carries it out.
    public func handle(_ exit: GuestExit) {
        switch exit {
        case let .portOut(port, _, value):
            if let vector = Ports.vector(forPort: port) {
                handleFault(vector: vector)
            } else if port == Ports.control {
                handleControl()
            } else if port == Ports.debugConsole {
                report.console.unicodeScalars.append(Unicode.Scalar(UInt8(truncatingIfNeeded: value)))
            } else if port == Ports.hostHandlerEntry || port == Ports.guestCallReturn {
                let eip = (try? backend.readState().eip).map { hex($0 &- 2) } ?? "?"
                finish(.invalidResume, "the guest reached the host address \(eip) outside a call from the host")
            }
            // Other ports: writes are ignored (no devices).
        case .portIn:
            // No devices: the bus floats high.
            do { try backend.completePortIn(value: 0xFFFF_FFFF) } catch { finish(.backendError, error.description) }
        case .halt:
            finish(.halt, "the guest executed HLT")
        case let .shutdown(reason):
            finish(.shutdown, reason)
        case let .failEntry(reason):
            finish(.failEntry, "KVM_EXIT_FAIL_ENTRY, hardware entry failure reason \(hex(reason, width: 16, prefix: "0x"))")
        case let .internalError(suberror, data, bytes):
            handleInternalError(suberror: suberror, data: data, bytes: bytes)
        case .interrupted:
            break
        case let .mmio(address, isWrite, length, _):
            let where_ = (try? backend.readState()).map { " at EIP \(hex($0.eip))" } ?? ""
            finish(.mmio, "the guest \(isWrite ? "wrote" : "read") \(length) byte(s) at guest-physical \(hex(address, width: 8)), where there is no memory\(where_)")
        case let .breakpoint(address):
            finish(.backendError, "unexpected breakpoint at \(hex(address))")
        case let .singleStep(address):
            finish(.backendError, "unexpected single-step stop at \(hex(address))")
        case let .assistFailed(bytes, address, why):
            finish(.emulationFailure, "KVM could not emulate [\(bytes.map { hex($0, width: 2, prefix: "") }.joined(separator: " "))] at \(hex(address)) and the assist failed: \(why)")
        case let .unknown(reason):
            finish(.backendError, "unknown exit reason \(reason)")
        }
    }

    // MARK: calling guest procedures from the host

    /// How a guest procedure the host called ended.
    public enum GuestCallEnd: Sendable, Equatable {
        /// It returned with a near RET (to `MemoryMap.guestCallReturn`).
        case returned
        /// It jumped to `previous` (a fault handler passing the fault on).
        case reachedPrevious
    }

    /// Calls guest code at `entry` as `call entry` would, from the host: `state` with the return
    /// address `MemoryMap.guestCallReturn` pushed on its stack. Runs until the procedure returns,
    /// or reaches `previous` (a guest address, caught with a breakpoint, or a host-handler
    /// address, which exits by itself). VMMcalls made meanwhile are served; a fault or HLT inside
    /// the procedure, or the timeout, is an error. The CPU state from before the call is restored
    /// afterwards; the state at the end of the procedure is returned (with ESP as before the
    /// return address was pushed, when it reached `previous`).
    public func callGuest(_ entry: UInt32, state: CPUState, previous: UInt32?, purpose makePurpose: @autoclosure () -> String)
        throws(HarnessError) -> (end: GuestCallEnd, state: CPUState)
    {
        // Built only for an error message: this is on every guest handler's path.
        var purpose: String { makePurpose() }
        // After the run has ended (the VMM's shutdown messages) the call still runs; only what
        // ends it during the call counts.
        let endedBefore = finished
        if endedBefore?.reason == .timeout { throw .guestProtocol("\(purpose): the run timed out") }
        func ended() -> (reason: ExitReason, message: String)? { endedBefore == nil ? finished : nil }
        guard guestCallDepth < 8 else { throw .guestProtocol("\(purpose): guest calls nested too deeply") }
        startClock()
        let saved = try backend.readState()
        var s = state
        s.esp &-= 4
        do {
            guard let at = PageWalker.contiguous(s.esp &+ s.ss.base, count: 4, state: s, memory: memory) else {
                throw MemoryAccessError(address: UInt64(s.esp), length: 4, isWrite: true)
            }
            try memory.write32(at, MemoryMap.guestCallReturn)
        } catch {
            throw .guestProtocol("\(purpose): the stack at \(hex(s.esp)) is outside guest memory")
        }
        s.eip = entry
        try backend.writeState(s)
        // The breakpoint that catches the jump to `previous` (a guest address; a host slot exits
        // by itself). Changed only when it differs from the armed one and cleared lazily, before
        // the guest runs outside a call (`runOnce`): walking a chain of guest handlers costs one
        // KVM_SET_GUEST_DEBUG per handler instead of two.
        let outerBreakpoint = armedBreakpoint
        try arm(previous.flatMap { VMMHostArea.isHandlerSlot($0) ? nil : $0 })
        guestCallDepth += 1
        defer {
            guestCallDepth -= 1
            // A nested call (a guest procedure run while another waits) gives the outer one its
            // breakpoint back.
            if guestCallDepth > 0 { try? arm(outerBreakpoint) }
            try? backend.writeState(saved)
        }
        // After the run (the VMM's shutdown messages) the run's own watchdog is gone: bound the
        // call with one of its own, as long as the run's timeout.
        var afterRun: Watchdog?
        if endedBefore != nil {
            let w = Watchdog()
            let kvm = backend as? KVMBackend
            w.arm(after: options.timeout ?? 10) { [weak kvm] in kvm?.kick() }
            afterRun = w
        }
        defer { afterRun?.cancel() }
        while true {
            guard let exit = runOnce() else {
                throw .guestProtocol("\(purpose): \(finished?.message ?? "stopped")")
            }
            if let afterRun, afterRun.expired {
                throw .guestProtocol("\(purpose) did not return within \(options.timeout ?? 10) s")
            }
            switch exit {
            case let .portOut(port, _, _) where port == Ports.guestCallReturn:
                var st = try backend.readState()
                guard st.eip == MemoryMap.guestCallReturn &+ 2 else { continue }
                st.eip = MemoryMap.guestCallReturn
                return (.returned, st)
            case let .portOut(port, _, _) where port == Ports.hostHandlerEntry:
                var st = try backend.readState()
                let address = st.eip &- 2
                guard let previous, address == previous else {
                    throw .guestProtocol("\(purpose) jumped to the host handler at \(hex(address)), which is not its previous handler")
                }
                st.eip = address
                st.esp &+= 4   // the return address of the call is still on the stack
                return (.reachedPrevious, st)
            case let .breakpoint(address):
                var st = try backend.readState()
                guard let previous, address == previous else {
                    throw .guestProtocol("\(purpose): unexpected breakpoint at \(hex(address))")
                }
                st.esp &+= 4
                return (.reachedPrevious, st)
            case let .portOut(port, _, _) where Ports.vector(forPort: port) != nil:
                let vector = Ports.vector(forPort: port) ?? 0
                if vector == 0x20 {
                    handleFault(vector: vector)     // VMMcall from the procedure
                    if let f = ended() { throw .guestProtocol("\(purpose): \(f.message)") }
                    continue
                }
                let where_ = (try? readFault(vector: vector)).map { " at \(hex($0.frame.cs, width: 4, prefix: "")):\(hex($0.frame.eip, prefix: ""))" } ?? ""
                throw .guestProtocol("\(ExceptionNames.name(vector)) inside \(purpose)\(where_)")
            case .halt:
                throw .guestProtocol("\(purpose) executed HLT")
            case .interrupted:
                continue
            default:
                handle(exit)
                if let f = ended() { throw .guestProtocol("\(purpose): \(f.message)") }
            }
        }
    }

    private func handleInternalError(suberror: UInt32, data: [UInt64], bytes: [UInt8]) {
        // Only for messages: built when one is (an assisted INT n is on every VMMcall's path on PVM hosts).
        var hexBytes: String { bytes.map { hex($0, width: 2, prefix: "") }.joined(separator: " ") }
        guard suberror == 1 else {
            finish(.backendError, "KVM_EXIT_INTERNAL_ERROR suberror \(suberror), data \(data.map { hex($0, width: 16, prefix: "0x") })")
            return
        }
        guard let assist else {
            finish(.emulationFailure, "KVM could not emulate the instruction [\(hexBytes)] and no assist is configured")
            return
        }
        do {
            var state = try backend.readState()
            let eip = state.eip
            switch assist.assist(state: &state, memory: memory) {
            case .completed:
                try backend.writeState(state)
            case let .exit(e):
                try backend.writeState(state)
                handle(e)
            case let .failed(why):
                finish(.emulationFailure, "KVM could not emulate [\(hexBytes)] at \(hex(eip)) and the assist failed: \(why)")
            }
        } catch {
            finish(.backendError, error.description)
        }
    }

    private func handleControl() {
        do {
            var s = try backend.readState()
            guard s.cpl == 0 else {
                finish(.invalidResume, "runtime call from ring \(s.cpl)")
                return
            }
            switch RuntimeCall(rawValue: s.eax) {
            case .enterRing3:
                let loader = SegmentLoader(memory: memory, gdtr: s.gdtr)
                do {
                    s.cs = try loader.loadCode(Selectors.ring3Code)
                    s.ss = try loader.loadStack(Selectors.ring3Data, cpl: 3)
                    let d = try loader.loadData(Selectors.ring3Data, cpl: 3, name: "DS")
                    s.ds = d; s.es = d; s.fs = d; s.gs = d
                } catch {
                    finish(.invalidResume, "entering ring 3: \(error)")
                    return
                }
                s.eip = s.ecx
                s.esp = s.edx
                s.eflags = (s.esi & Machine.resumableFlags) | EFlags.reserved1
                try backend.writeState(s)
            case .checkpoint:
                report.checkpoints.append(Checkpoint(tag: s.ecx, value: s.ebx))
            case .enterV86:
                let cs = SegmentRegister.v86(selector: UInt16(truncatingIfNeeded: s.edi))
                s.cs = cs; s.ds = cs; s.es = cs; s.fs = cs; s.gs = cs
                s.ss = .v86(selector: UInt16(truncatingIfNeeded: s.edi >> 16))
                s.eip = s.ecx & 0xFFFF
                s.esp = s.edx & 0xFFFF
                s.eflags = (s.esi & Machine.resumableFlags) | EFlags.vm | EFlags.reserved1
                try backend.writeState(s)
            case .raiseNMI:
                try raiseNMI()
            case .raiseIRQ:
                guard let pic = interruptController else {
                    finish(.invalidResume, "IRQ \(s.ecx) raised, but no virtual PIC is attached")
                    return
                }
                if let why = pic.raise(irq: UInt8(truncatingIfNeeded: min(s.ecx, 255))) {
                    finish(.invalidResume, "IRQ \(s.ecx) refused by the virtual PIC: \(why)")
                }
            case nil:
                finish(.invalidResume, "unknown runtime call \(hex(s.eax)) at \(hex(s.eip))")
            }
        } catch {
            finish(.backendError, error.description)
        }
    }

    /// Delivers a non-maskable interrupt to the guest: `KVM_NMI` on KVM; on the interpreter the
    /// same delivery through IDT vector 02h.
    public func raiseNMI() throws(HarnessError) {
        if let kvm = backend as? KVMBackend {
            try kvm.vcpu.injectNMI()
        } else {
            try deliverExternal(vector: 0x02)
        }
    }

    /// Delivers the virtual PIC's pending request through the IDT when the guest's IF is set, as
    /// the CPU takes an external interrupt (the interpreter performs the delivery on the current
    /// state, for both backends). The stub for 50h+IRQ then exits to the host like any fault.
    func deliverPendingInterrupt() {
        guard finished == nil, let vector = interruptController?.pendingVector else { return }
        guard let s = try? backend.readState(), s.eflags & EFlags.if != 0 else { return }
        do { try deliverExternal(vector: vector) } catch { finish(.backendError, "delivering vector \(hex(vector, width: 2)): \(error)") }
    }

    private func deliverExternal(vector: UInt8) throws(HarnessError) {
        let interpreter = Interpreter(memory: memory, state: try backend.readState())
        if let stop = interpreter.deliverExternalInterrupt(vector: vector) {
            if case let .shutdown(reason) = stop { finish(.shutdown, reason); return }
        }
        try backend.writeState(interpreter.state)
    }

    /// EFLAGS bits a frame may set on resume (no VM: V86 is not resumed through frames; no RF/VIF/VIP).
    static let resumableFlags: UInt32 = 0x0024_7FD7

    // MARK: faults

    /// Reads the frame the stub for `vector` left, completes it, hands it to the fault handling and
    /// resumes the guest from what the handlers left.
    private func handleFault(vector: UInt8) {
        let event: FaultEvent
        do {
            event = try readFault(vector: vector)
        } catch {
            finish(.invalidResume, "fault \(hex(vector, width: 2)): \(error)")
            return
        }
        let index = report.faultCount
        report.faultCount += 1
        var frame = event.frame
        var details = FaultDetails()
        // Faults beyond the listed ones get no record and no trace: the fast path allocates nothing.
        let wanted = report.faults.count < options.maxRecordedFaults
        details.wanted = wanted
        let resolution: FaultResolution
        if let faultHandling {
            resolution = faultHandling.handleFault(event, frame: &frame, details: &details)
        } else {
            resolution = .unhandled(report: "unhandled \(ExceptionNames.name(vector)) at \(hex(event.frame.cs, width: 4, prefix: "")):\(hex(event.frame.eip, prefix: ""))")
        }
        var record: FaultRecord?
        if wanted {
            record = FaultRecord(index: index, vector: vector, name: ExceptionNames.name(vector),
                                 errorCode: event.frame.error, cs: event.frame.cs, eip: event.frame.eip,
                                 eflags: event.frame.eflags, ring: event.ring, frameAddress: event.frameAddress,
                                 symbol: image.symbolize(event.frame.eip).map { $0.offset == 0 ? $0.name : "\($0.name)+\(hex($0.offset, width: 1, prefix: "0x"))" },
                                 outcome: "", handledBy: "", resumeCS: nil, resumeEIP: nil,
                                 frame: options.recordFrames ? Machine.frameDictionary(frame) : nil,
                                 details: details.trace.isEmpty && details.dispatch == nil ? nil : details)
        }
        defer {
            if let record { report.faults.append(record) }
        }
        switch resolution {
        case let .unhandled(text):
            record?.outcome = "unhandled"
            record?.handledBy = text
            finish(.unhandledFault, text)
            return
        case let .stop(reason, message):
            record?.outcome = "stopped"
            record?.handledBy = message
            finish(reason, message)
            return
        case let .resume(by):
            record?.outcome = "resumed"
            record?.handledBy = by
        }
        // Fault storm: the same fault with the same frame, again and again, means no progress.
        if let last = lastFault, last.vector == vector, last.frame == event.frame {
            stormCount += 1
            if stormCount >= options.faultStormLimit {
                finish(.faultStorm, "\(ExceptionNames.name(vector)) at \(hex(event.frame.cs, width: 4, prefix: "")):\(hex(event.frame.eip, prefix: "")) repeated \(stormCount + 1) times with identical registers")
                return
            }
        } else {
            stormCount = 0
        }
        lastFault = (vector, event.frame)
        do {
            let state = try resumeState(from: frame, event: event)
            if frame != event.frame { try? storeFrame(frame, at: event.frameAddress, pagingState: event.stubState) }
            try backend.writeState(state)
            record?.resumeCS = frame.cs
            record?.resumeEIP = frame.eip
        } catch let e as SegmentLoadError {
            record?.outcome = "stopped"
            finish(.invalidResume, "the frame left by the handlers cannot be resumed: \(e)")
        } catch {
            finish(.backendError, "\(error)")
        }
    }

    /// Reads and completes the frame of a stub exit. Validates everything the guest supplied.
    func readFault(vector: UInt8) throws(HarnessError) -> FaultEvent {
        let st = try backend.readState()
        guard st.cpl == 0, st.cs.selector == Selectors.ring0Code else {
            throw .guestProtocol("fault port written from \(hex(st.cs.selector, width: 4)):\(hex(st.eip)), not from a ring-0 stub")
        }
        // The frame's linear address (what guest handlers get in EBP) and where it lies in guest
        // memory (different only with paging on). The 10h bytes below it hold the ring-0 segment slots.
        let lin = st.esp &+ st.ss.base
        guard let below = PageWalker.contiguous(lin &- 16, count: ClientRegisters.size + 16, state: st, memory: memory) else {
            throw .guestProtocol("the stub's frame at linear \(hex(lin)) is not mapped by the guest's page tables")
        }
        let addr = below &+ 16
        var frame = ClientRegisters()
        do { try frame.load(from: memory, at: addr, count: ClientRegisters.stubFrameSize) } catch {
            throw .guestProtocol("the stub's frame at \(hex(addr)) is outside guest memory")
        }
        let fromV86 = frame.eflags & EFlags.vm != 0
        let ring: UInt8 = fromV86 ? 3 : UInt8(frame.cs & 3)
        do {
            if fromV86 {
                // The CPU pushed the V86 segment registers itself (Client_ES..Client_GS).
                frame.esp = try memory.read32(addr &+ 0x30)
                frame.ss = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x34))
                frame.es = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x38))
                frame.ds = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x3C))
                frame.fs = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x40))
                frame.gs = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x44))
                return FaultEvent(vector: vector, frame: frame, frameAddress: lin, ring: ring, stubState: st)
            }
            if ring != 0 {
                frame.esp = try memory.read32(addr &+ 0x30)
                frame.ss = UInt16(truncatingIfNeeded: try memory.read32(addr &+ 0x34))
            } else {
                frame.esp = st.esp &+ 0x30
                frame.ss = st.ss.selector
            }
            frame.ds = st.ds.selector; frame.es = st.es.selector; frame.fs = st.fs.selector; frame.gs = st.gs.selector
            // Complete the frame in guest memory too, as the DDK lays it out: for a ring-3 fault
            // the Client_Reg_Struc continues above the CPU frame; for a ring-0 fault (the VMM's
            // re-entrant frame) DS, ES, FS, GS sit below EBP.
            if ring != 0 {
                try frame.store(to: memory, at: addr, count: ClientRegisters.size)
            } else {
                try memory.write32(addr &- 4, UInt32(frame.ds))
                try memory.write32(addr &- 8, UInt32(frame.es))
                try memory.write32(addr &- 12, UInt32(frame.fs))
                try memory.write32(addr &- 16, UInt32(frame.gs))
            }
        } catch {
            throw .guestProtocol("the fault frame at \(hex(addr)) does not fit guest memory")
        }
        return FaultEvent(vector: vector, frame: frame, frameAddress: lin, ring: ring, stubState: st)
    }

    /// The guest-physical address of `count` bytes at guest-linear `linear` under the vCPU's current
    /// paging state (identity without paging).
    public func physical(_ linear: UInt32, count: Int) throws(HarnessError) -> UInt32 {
        let st = try backend.readState()
        guard let p = PageWalker.contiguous(linear, count: count, state: st, memory: memory) else {
            throw .guestProtocol("linear \(hex(linear)) (\(count) bytes) is not mapped by the guest's page tables")
        }
        return p
    }

    /// Reads a dword at a guest-linear address (through the guest's page tables).
    public func readLinear32(_ linear: UInt32) throws(HarnessError) -> UInt32 {
        do { return try memory.read32(try physical(linear, count: 4)) } catch let e as MemoryAccessError {
            throw .memory(e)
        } catch {
            throw error as? HarnessError ?? .guestProtocol("\(error)")
        }
    }

    /// Writes `frame` into guest memory at `address` in the layout `readFault` established: the
    /// whole Client_Reg_Struc for a fault from ring 3 or V86, the re-entrant frame (00h–2Fh) with
    /// DS, ES, FS, GS below it for a fault from ring 0.
    public func storeFrame(_ frame: ClientRegisters, at linear: UInt32) throws(HarnessError) {
        try storeFrame(frame, at: linear, pagingState: try backend.readState())
    }

    /// `storeFrame(_:at:)` with the paging state already at hand (the fault path has the stub's).
    func storeFrame(_ frame: ClientRegisters, at linear: UInt32, pagingState: CPUState) throws(HarnessError) {
        guard let below = PageWalker.contiguous(linear &- 16, count: ClientRegisters.size + 16, state: pagingState,
                                                memory: memory) else {
            throw .guestProtocol("linear \(hex(linear &- 16)) (\(ClientRegisters.size + 16) bytes) is not mapped by the guest's page tables")
        }
        let address = below &+ 16
        do {
            if frame.cs & 3 != 0 || frame.eflags & EFlags.vm != 0 {
                try frame.store(to: memory, at: address, count: ClientRegisters.size)
            } else {
                try frame.store(to: memory, at: address, count: ClientRegisters.stubFrameSize)
                try memory.write32(address &- 4, UInt32(frame.ds))
                try memory.write32(address &- 8, UInt32(frame.es))
                try memory.write32(address &- 12, UInt32(frame.fs))
                try memory.write32(address &- 16, UInt32(frame.gs))
            }
        } catch {
            throw .guestProtocol("the frame at \(hex(address)) does not fit guest memory")
        }
    }

    /// Reads back a frame stored by `storeFrame` (after guest code may have changed it). For a
    /// ring-0 frame, Client_ESP and Client_SS are not in guest memory and come from `template`.
    public func loadFrame(at linear: UInt32, template: ClientRegisters) throws(HarnessError) -> ClientRegisters {
        let address = try physical(linear &- 16, count: ClientRegisters.size + 16) &+ 16
        do {
            let full = template.cs & 3 != 0 || template.eflags & EFlags.vm != 0
            // Field by field over the template (no buffers: this is on every guest handler's path).
            var f = template
            try f.load(from: memory, at: address, count: full ? ClientRegisters.size : ClientRegisters.stubFrameSize)
            if !full {
                f.ds = UInt16(truncatingIfNeeded: try memory.read32(address &- 4))
                f.es = UInt16(truncatingIfNeeded: try memory.read32(address &- 8))
                f.fs = UInt16(truncatingIfNeeded: try memory.read32(address &- 12))
                f.gs = UInt16(truncatingIfNeeded: try memory.read32(address &- 16))
            }
            return f
        } catch {
            throw .guestProtocol("the frame at \(hex(address)) does not fit guest memory")
        }
    }

    /// The CPU state the guest continues with: the frame's registers, with every segment register
    /// reloaded from the GDT with the checks IRET would make.
    func resumeState(from frame: ClientRegisters, event: FaultEvent) throws(SegmentLoadError) -> CPUState {
        var s = event.stubState
        if frame.eflags & EFlags.vm != 0 {
            // Back to virtual-8086 mode: segments are real-mode style (base = selector << 4).
            s.eax = frame.eax; s.ebx = frame.ebx; s.ecx = frame.ecx; s.edx = frame.edx
            s.esi = frame.esi; s.edi = frame.edi; s.ebp = frame.ebp
            s.eip = frame.eip & 0xFFFF
            s.esp = frame.esp & 0xFFFF
            s.eflags = (frame.eflags & Machine.resumableFlags) | EFlags.vm | EFlags.reserved1
            s.cs = .v86(selector: frame.cs); s.ss = .v86(selector: frame.ss); s.ds = .v86(selector: frame.ds)
            s.es = .v86(selector: frame.es); s.fs = .v86(selector: frame.fs); s.gs = .v86(selector: frame.gs)
            return s
        }
        s.eax = frame.eax; s.ebx = frame.ebx; s.ecx = frame.ecx; s.edx = frame.edx
        s.esi = frame.esi; s.edi = frame.edi; s.ebp = frame.ebp
        s.eip = frame.eip
        s.esp = frame.esp
        s.eflags = (frame.eflags & Machine.resumableFlags) | EFlags.reserved1
        let loader = SegmentLoader(memory: memory, gdtr: s.gdtr)
        let cpl = UInt8(frame.cs & 3)
        s.cs = try loader.loadCode(frame.cs)
        s.ss = try loader.loadStack(frame.ss, cpl: cpl)
        // DS, ES, FS and GS usually hold one selector: the same load with the same CPL gives the
        // same result, so each distinct selector is loaded (and checked) once.
        s.ds = try loader.loadData(frame.ds, cpl: cpl, name: "DS")
        s.es = frame.es == frame.ds ? s.ds : try loader.loadData(frame.es, cpl: cpl, name: "ES")
        s.fs = frame.fs == frame.ds ? s.ds : frame.fs == frame.es ? s.es : try loader.loadData(frame.fs, cpl: cpl, name: "FS")
        s.gs = frame.gs == frame.ds ? s.ds : frame.gs == frame.fs ? s.fs : try loader.loadData(frame.gs, cpl: cpl, name: "GS")
        return s
    }

    static func frameDictionary(_ f: ClientRegisters) -> [String: UInt32] {
        ["Client_EAX": f.eax, "Client_EBX": f.ebx, "Client_ECX": f.ecx, "Client_EDX": f.edx,
         "Client_ESI": f.esi, "Client_EDI": f.edi, "Client_EBP": f.ebp, "Client_Error": f.error,
         "Client_EIP": f.eip, "Client_CS": UInt32(f.cs), "Client_EFlags": f.eflags, "Client_ESP": f.esp,
         "Client_SS": UInt32(f.ss), "Client_ES": UInt32(f.es), "Client_DS": UInt32(f.ds),
         "Client_FS": UInt32(f.fs), "Client_GS": UInt32(f.gs)]
    }
}

/// A run's timeout clock on its own thread: at the deadline it marks the run expired and calls
/// `onExpire` (the KVM kick), unless cancelled first. A thread of its own (not a dispatch queue) so
/// a busy process cannot delay it.
final class Watchdog: @unchecked Sendable {
    private let condition = NSCondition()
    private var cancelled = false
    /// Set once at the deadline; read after every guest exit, so an atomic rather than the lock.
    private let fired = Atomic<Bool>(false)

    /// Whether the deadline has passed.
    var expired: Bool { fired.load(ordering: .acquiring) }

    func arm(after seconds: Double, _ onExpire: @escaping @Sendable () -> Void) {
        let deadline = Date(timeIntervalSinceNow: seconds)
        let thread = Thread { [self] in
            condition.lock()
            while !cancelled && Date() < deadline { _ = condition.wait(until: deadline) }
            let fire = !cancelled
            if fire { fired.store(true, ordering: .releasing) }
            condition.unlock()
            if fire { onExpire() }
        }
        thread.name = "vmm-harness watchdog"
        thread.start()
    }

    func cancel() {
        condition.lock()
        cancelled = true
        condition.signal()
        condition.unlock()
    }
}
