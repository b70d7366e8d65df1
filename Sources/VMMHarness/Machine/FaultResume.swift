extension Machine {
    /// Reads the frame the stub for `vector` left, hands it to the fault handling and resumes the
    /// guest from what the handlers left (through `FrameCodec`'s resume rules).
    func handleFault(vector: UInt8) {
        let event: FaultEvent
        do {
            event = try frames.readFault(vector: vector, stubState: try backend.readState())
        } catch {
            finish(.invalidResume, "fault \(hex(vector, width: 2)): \(error)")
            return
        }
        // A #UD from an outer ring may be one the host injected for an instruction its
        // emulator lacks (KVM at CPL > 0): the backend runs it again from the state before it,
        // and what that led to is handled instead (once: a real #UD comes back as itself).
        if vector == 0x06, event.ring != 0, !reexaminingUndefinedOpcode, event.frame.eflags & EFlags.vm == 0,
           let before = try? frames.resumeState(from: event.frame, stubState: event.stubState) {
            do {
                if let exit = try backend.reexamineUndefinedOpcode(preFaultState: before) {
                    reexaminingUndefinedOpcode = true
                    defer { reexaminingUndefinedOpcode = false }
                    _ = try perform(ExitHandling.action(for: exit, bus: bus), goal: .runEnds, purpose: "the guest")
                    return
                }
            } catch {
                finish(.backendError, "re-running the instruction behind a #UD at \(hex(event.frame.eip)): \(error)")
                return
            }
        }
        let index = report.faultCount
        report.faultCount += 1
        var frame = event.frame
        var details = FaultDetails()
        // Faults beyond the listed ones get no record and no trace: the fast path allocates nothing.
        let wanted = report.faults.count < options.maxRecordedFaults
        details.wanted = wanted
        let callsBefore = systemStateGeneration
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
                                 frame: options.recordFrames ? FrameCodec.namedFields(frame) : nil,
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
        // The system state to resume in: the stub's, unless guest handlers ran, which may have
        // changed it (CR0.TS, CR3, the tables); then the vCPU's now.
        let base: CPUState
        if systemStateGeneration == callsBefore {
            base = event.stubState
        } else {
            do { base = try backend.readState() } catch {
                finish(.backendError, "\(error)")
                return
            }
        }
        let state: CPUState
        do {
            state = try frames.resumeState(from: frame, stubState: base)
        } catch {
            record?.outcome = "stopped"
            finish(.invalidResume, "the frame left by the handlers cannot be resumed: \(error)")
            return
        }
        do {
            // The changed frame is also left in guest memory, where the DDK's frame lives.
            if frame != event.frame { try frames.store(frame, at: event.frameAddress, pagingState: base) }
            try backend.writeState(state)
            record?.resumeCS = frame.cs
            record?.resumeEIP = frame.eip
        } catch {
            record?.outcome = "stopped"
            finish(.backendError, "\(error)")
        }
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
        let p = try physical(linear, count: 4)
        do { return try memory.read32(p) } catch { throw .memory(error) }
    }
}
