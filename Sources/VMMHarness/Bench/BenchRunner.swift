import CFaultFloor
import Foundation

/// Runs the fault-latency and throughput benchmark (`vmm-harness bench`).
///
/// Every fault row runs a guest loop that raises the fault once per iteration (`BenchGuests`) and
/// timestamps the same point of every round trip on the host: the moment the machine hands the
/// fault to its fault handling (just after the backend's exit was decoded and the frame read).
/// The interval between two consecutive timestamps is one full round trip: handler chain, resume,
/// backend re-entry, the guest's `dec ecx; jnz`, the fault's delivery through the IDT, the stub, the
/// exit. Timestamps go into a preallocated buffer and become an HdrHistogram afterwards.
public struct BenchRunner {
    public var settings: BenchSettings
    /// Counts heap allocations made by the process (nil: allocations are not measured). The
    /// `vmm-harness` executable supplies its malloc interposer here.
    public var allocationCounter: (@Sendable () -> UInt64)?
    /// Called with a line as each row finishes.
    public var progress: ((String) -> Void)?
    /// The KVM device path.
    public var kvmDevice: String

    public init(settings: BenchSettings = .standard, allocationCounter: (@Sendable () -> UInt64)? = nil,
                progress: ((String) -> Void)? = nil, kvmDevice: String = BackendOptions(environment: ProcessInfo.processInfo.environment).kvmDevicePath) {
        self.settings = settings
        self.allocationCounter = allocationCounter
        self.progress = progress
        self.kvmDevice = kvmDevice
    }

    /// Runs everything `settings` asks for. Rows that cannot run say why; nothing throws.
    public func run() -> BenchResult {
        let host = HostDescription.current(devicePath: kvmDevice)
        var faults: [FaultBenchRow] = []
        var throughput: [ThroughputRow] = []
        func add(_ r: FaultBenchRow) {
            faults.append(r)
            progress?(BenchReport.progressLine(r))
        }
        if settings.includeBaselines { add(clockRow()) }
        for backend in settings.backends {
            let kvmUnavailable = backend == .kvm && !host.kvmUsable
            var floorIndex: Int?
            if backend == .kvm && settings.includeFloor {
                floorIndex = faults.count
                add(kvmUnavailable ? unavailable("c", .cFloor, .invalidOpcode, nil, 0, host.kvmError ?? "KVM is not usable")
                                   : cFloorRow())
            }
            if settings.includeBaselines {
                for path in [BenchPath.backend, .machine] {
                    add(kvmUnavailable ? unavailable(backend.rawValue, path, .invalidOpcode, nil, 0, host.kvmError ?? "KVM is not usable")
                                       : baselineRow(backend, path, .invalidOpcode))
                }
            }
            for kind in settings.faults {
                for handler in settings.handlers {
                    for depth in settings.depths {
                        if kvmUnavailable {
                            add(unavailable(backend.rawValue, .vmm, kind, handler, depth, host.kvmError ?? "KVM is not usable"))
                        } else if handler == .guest && kind == .vmmCall {
                            add(unavailable(backend.rawValue, .vmm, kind, .guest, depth,
                                            "VMMcall is served by the service table, not by fault handlers"))
                        } else if handler == .guest {
                            add(guestRow(backend, kind, depth))
                        } else {
                            add(vmmRow(backend, kind, depth))
                        }
                    }
                }
            }
            // The floor once more after the KVM rows: a shared host can slow one short run (another
            // build takes the core), and a slow floor would flatter every ratio. The lower p50 of
            // the two is the floor; both are in the note.
            if let i = floorIndex, !kvmUnavailable, let before = faults[i].latency {
                var again = cFloorRow()
                if let after = again.latency {
                    let both = "floor p50 \(before.p50Ns) ns before the KVM rows, \(after.p50Ns) ns after; the lower is used"
                    if after.p50Ns < before.p50Ns {
                        again.note = [again.note, both].compactMap { $0 }.joined(separator: "; ")
                        faults[i] = again
                    } else {
                        faults[i].note = [faults[i].note, both].compactMap { $0 }.joined(separator: "; ")
                    }
                    progress?("c-floor again: p50 \(after.p50Ns) ns")
                }
            }
            let t = kvmUnavailable
                ? ThroughputRow(backend: backend.rawValue, loop: "alu", iterations: 0,
                                instructionsPerIteration: BenchGuests.aluInstructionsPerIteration, instructions: 0,
                                counted: false, seconds: 0, instructionsPerSecond: 0, nsPerInstruction: 0, runs: 0,
                                status: "not available", note: host.kvmError ?? "KVM is not usable")
                : aluRow(backend)
            throughput.append(t)
            progress?(BenchReport.progressLine(t))
        }
        if settings.includeBaselines, settings.handlers.contains(.swift) {
            for kind in settings.faults.prefix(1) {
                for depth in settings.depths { add(dispatchRow(kind, depth)) }
            }
        }
        let formatter = ISO8601DateFormatter()
        var result = BenchResult(host: host, date: formatter.string(from: Date()), configuration: settings,
                                 faults: faults, throughput: throughput, targets: [],
                                 allocationCounting: allocationCounter != nil)
        result.targets = BenchReport.targets(result)
        return result
    }

    // MARK: rows

    func unavailable(_ backend: String, _ path: BenchPath, _ kind: BenchFaultKind, _ handler: BenchHandlerKind?,
                     _ depth: Int, _ why: String) -> FaultBenchRow {
        FaultBenchRow(backend: backend, path: path, fault: kind.rawValue, handler: handler, depth: depth,
                      status: "not available", note: why)
    }

    func failed(_ backend: String, _ path: BenchPath, _ kind: BenchFaultKind, _ handler: BenchHandlerKind?,
                _ depth: Int, _ why: String) -> FaultBenchRow {
        FaultBenchRow(backend: backend, path: path, fault: kind.rawValue, handler: handler, depth: depth,
                      status: "failed", note: why)
    }

    func options() -> MachineOptions {
        var o = MachineOptions()
        o.timeout = 600
        o.maxRecordedFaults = 0
        o.recordFrames = false
        return o
    }

    /// The VMM of a chain row: booted (its own handlers installed, passing on), then `depth` Swift
    /// handlers hooked on `kind.vector`. The first hooked, visited last, processes the fault by
    /// advancing `Client_EIP`; the `depth - 1` newer ones pass it on.
    public static func makeVMM(_ kind: BenchFaultKind, depth: Int) throws(HarnessError) -> VirtualMachineManager {
        var config = VMMConfiguration()
        config.vmmCodeRange = MemoryMap.runtimeBase..<MemoryMap.runtimeLimit
        let vmm = VirtualMachineManager(configuration: config)
        do { try vmm.boot() } catch { throw .invalidArgument("VMM boot failed: \(error)") }
        let advance = kind.resumeAdvance
        do {
            try vmm.hookVMMFault(UInt32(kind.vector), name: "bench processor") { _, frame, _ in
                frame.eip &+= advance
                return .processed
            }
            for i in 1..<max(1, depth) {
                try vmm.hookVMMFault(UInt32(kind.vector), name: "bench pass-on \(i)") { _, _, _ in .passedOn }
            }
        } catch {
            throw .invalidArgument("Hook_VMM_Fault failed: \(error)")
        }
        return vmm
    }

    func makeMachine(_ backend: BackendKind, image: GuestImage) throws(HarnessError) -> Machine {
        try Harness.makeMachine(image: image, choice: backend == .kvm ? .kvm : .interpreter, options: options())
    }

    /// The whole harness: Machine + VMM + a chain of `depth` Swift handlers.
    func vmmRow(_ backend: BackendKind, _ kind: BenchFaultKind, _ depth: Int) -> FaultBenchRow {
        let n = settings.iterations(for: backend, depth: depth), warm = max(1, Int(Double(n) * settings.warmupFraction))
        do {
            let machine = try makeMachine(backend, image: BenchGuests.faultLoop(kind, count: UInt32(n + warm + 1)))
            let vmm = try BenchRunner.makeVMM(kind, depth: depth)
            let handling = VMMFaultHandling(vmm: vmm)
            handling.attach(to: machine)
            let clock = RoundTripClock(warmup: warm, measured: n, allocations: allocationCounter)
            machine.faultHandling = TimedFaultHandling(inner: handling, clock: clock)
            let report = machine.run()
            return finish(backend.rawValue, .vmm, kind, .swift, depth, report: report, expected: n + warm + 1, clock: clock)
        } catch {
            return failed(backend.rawValue, .vmm, kind, .swift, depth, error.description)
        }
    }

    /// The whole harness with a chain of `depth` guest FaultProcs (guest code entered as
    /// `call [FaultProc]`): the oldest processes the fault (`add dword [ebp+Client_EIP], n; ret`),
    /// the newer ones pass it on with `jmp dword [previous]`, as the DDK's handlers do.
    func guestRow(_ backend: BackendKind, _ kind: BenchFaultKind, _ depth: Int) -> FaultBenchRow {
        let n = settings.iterations(for: backend, depth: depth), warm = max(1, Int(Double(n) * settings.warmupFraction))
        do {
            let loop = BenchGuests.faultLoop(kind, count: UInt32(n + warm + 1))
            // Handlers at +1000h (8 bytes each), their previous-handler slots at +2000h.
            let code = MemoryMap.imageBase + 0x1000, slots = MemoryMap.imageBase + 0x2000
            var bytes = loop.bytes + [UInt8](repeating: 0xF4, count: 0x1000 - loop.bytes.count)
            var handlers = [UInt8]()
            for i in 0..<depth {
                if i == 0 {
                    handlers += [0x83, 0x45, UInt8(ClientRegisters.Offset.eip), UInt8(kind.resumeAdvance), 0xC3, 0xF4, 0xF4, 0xF4]
                } else {
                    handlers += [0xFF, 0x25] + BenchGuests.le32(slots + UInt32(4 * i)) + [0xF4, 0xF4]
                }
            }
            bytes += handlers + [UInt8](repeating: 0, count: 0x1000 - handlers.count % 0x1000) + [UInt8](repeating: 0, count: 4 * depth)
            let image = GuestImage(name: loop.name, bytes: bytes, symbols: loop.symbols)
            let machine = try makeMachine(backend, image: image)
            var config = VMMConfiguration()
            config.vmmCodeRange = MemoryMap.runtimeBase..<MemoryMap.runtimeLimit
            let vmm = VirtualMachineManager(configuration: config)
            let handling = VMMFaultHandling(vmm: vmm)
            handling.attach(to: machine)
            do { try vmm.boot() } catch { throw HarnessError.invalidArgument("VMM boot failed: \(error)") }
            for i in 0..<depth {
                let previous: FaultHandlerAddress?
                do {
                    previous = try vmm.hookVMMFault(UInt32(kind.vector), handlerAt: FaultHandlerAddress(code + UInt32(8 * i)))
                } catch { throw HarnessError.invalidArgument("Hook_VMM_Fault failed: \(error)") }
                do { try machine.memory.write32(slots + UInt32(4 * i), previous?.rawValue ?? 0) } catch { throw HarnessError.memory(error) }
            }
            let clock = RoundTripClock(warmup: warm, measured: n, allocations: allocationCounter)
            machine.faultHandling = TimedFaultHandling(inner: handling, clock: clock)
            let report = machine.run()
            return finish(backend.rawValue, .vmm, kind, .guest, depth, report: report, expected: n + warm + 1, clock: clock)
        } catch {
            return failed(backend.rawValue, .vmm, kind, .guest, depth, "\(error)")
        }
    }

    /// Baselines without the VMM: `.machine` (Machine with a closure that advances EIP) and
    /// `.backend` (the benchmark drives the backend itself).
    func baselineRow(_ backend: BackendKind, _ path: BenchPath, _ kind: BenchFaultKind) -> FaultBenchRow {
        let n = settings.iterations(for: backend), warm = settings.warmup(for: backend)
        do {
            let machine = try makeMachine(backend, image: BenchGuests.faultLoop(kind, count: UInt32(n + warm + 1)))
            let clock = RoundTripClock(warmup: warm, measured: n, allocations: allocationCounter)
            if path == .machine {
                machine.faultHandling = TimedFaultHandling(inner: AdvancingFaultHandling(advance: kind.resumeAdvance), clock: clock)
                let report = machine.run()
                return finish(backend.rawValue, path, kind, nil, 0, report: report, expected: n + warm + 1, clock: clock)
            }
            let faults = try BenchRunner.driveBackend(machine, kind: kind, clock: clock)
            var row = FaultBenchRow(backend: backend.rawValue, path: path, fault: kind.rawValue, handler: nil, depth: 0)
            guard faults == n + warm + 1 else {
                return failed(backend.rawValue, path, kind, nil, 0, "the guest halted after \(faults) of \(n + warm + 1) faults")
            }
            row.latency = LatencySummary(samples: clock.intervals)
            row.allocationsPerFault = clock.allocationsPerInterval
            return row
        } catch {
            return failed(backend.rawValue, path, kind, nil, 0, error.description)
        }
    }

    /// The backend-only loop: run, take the stub's exit, read EIP and EFLAGS from the frame, advance
    /// EIP, pop the frame, resume (KVM: general registers only). INT n on a KVM host that cannot
    /// emulate it goes through the machine's instruction assist. Returns the faults seen.
    static func driveBackend(_ machine: Machine, kind: BenchFaultKind, clock: RoundTripClock) throws(HarnessError) -> Int {
        let backend = machine.backend
        let memory = machine.memory
        let port = Ports.faultBase + UInt16(kind.vector)
        let kvm = backend as? KVMBackend
        var faults = 0
        while true {
            switch try backend.run(instructionBudget: 1 << 20) {
            case let .portOut(p, _, _) where p == port:
                clock.tick()
                faults += 1
                var s = try backend.readState()
                let esp = s.esp &+ s.ss.base
                do {
                    s.eip = try memory.read32(esp &+ UInt32(ClientRegisters.Offset.eip)) &+ kind.resumeAdvance
                    s.eflags = try memory.read32(esp &+ UInt32(ClientRegisters.Offset.eflags)) | EFlags.reserved1
                } catch { throw .memory(error) }
                s.esp &+= UInt32(ClientRegisters.stubFrameSize)
                if let kvm { try kvm.writeGeneralRegisters(s) } else { try backend.writeState(s) }
            case .halt:
                return faults
            case .interrupted:
                continue
            case let .internalError(suberror, _, bytes) where suberror == 1:
                guard let assist = machine.assist else {
                    throw .unsupported("KVM cannot emulate \(bytes.map { hex($0, width: 2, prefix: "") }.joined(separator: " ")) and there is no assist")
                }
                var s = try backend.readState()
                switch assist.assist(state: &s, memory: memory) {
                case .completed: try backend.writeState(s)
                case let .exit(e): throw .unsupported("assist ended with \(e)")
                case let .failed(why): throw .unsupported("assist failed: \(why)")
                }
            case let other:
                throw .guestProtocol("unexpected exit \(other) after \(faults) faults")
            }
        }
    }

    func finish(_ backend: String, _ path: BenchPath, _ kind: BenchFaultKind, _ handler: BenchHandlerKind?, _ depth: Int,
                report: RunReport, expected: Int, clock: RoundTripClock) -> FaultBenchRow {
        guard report.exit.reason == .halt, report.faultCount == expected else {
            return failed(backend, path, kind, handler, depth,
                          "ended with \(report.exit.reason.rawValue) after \(report.faultCount) of \(expected) faults: \(report.exit.message)")
        }
        var row = FaultBenchRow(backend: backend, path: path, fault: kind.rawValue, handler: handler, depth: depth)
        row.latency = LatencySummary(samples: clock.intervals)
        row.allocationsPerFault = clock.allocationsPerInterval
        if report.statistics.assists > 0 {
            row.note = "\(report.statistics.assists) instruction assists (KVM cannot emulate INT n here)"
        }
        return row
    }

    /// `dispatchFault` alone: a synthetic ring-0 frame through a chain of `depth` Swift handlers,
    /// each call timed on its own (the figure includes one clock read, see the clock row).
    func dispatchRow(_ kind: BenchFaultKind, _ depth: Int) -> FaultBenchRow {
        let n = settings.dispatchIterations, warm = max(1, n / 10)
        do {
            let vmm = try BenchRunner.makeVMM(kind, depth: depth)
            // As the machine does for faults it will not list: no trace text, no per-visit records.
            vmm.recordsTraces = false
            var frame = ClientRegisters()
            frame.eip = MemoryMap.imageBase; frame.cs = Selectors.ring0Code; frame.eflags = EFlags.reserved1
            frame.ss = Selectors.ring0Data; frame.esp = MemoryMap.ring0StackTop
            frame.ds = Selectors.ring0Data; frame.es = Selectors.ring0Data; frame.fs = Selectors.ring0Data; frame.gs = Selectors.ring0Data
            var entry = HandlerRegisters()
            entry.esp = MemoryMap.ring0StackTop - 0x30
            let frameAddress = MemoryMap.ring0StackTop - 0x30
            let samples = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: n)
            defer { samples.deallocate() }
            var allocBefore: UInt64 = 0
            for i in 0..<(warm + n) {
                if i == warm { allocBefore = allocationCounter?() ?? 0 }
                var f = frame
                let t0 = monotonicNanoseconds()
                let outcome = try vmm.dispatchFault(vector: kind.vector, frame: &f, frameAddress: frameAddress,
                                                    entryRegisters: entry)
                let t1 = monotonicNanoseconds()
                guard case .processed = outcome.result else {
                    return failed("none", .dispatch, kind, .swift, depth, "the chain did not process the fault")
                }
                if i >= warm { samples[i - warm] = t1 &- t0 }
            }
            let allocAfter = allocationCounter?() ?? 0
            var row = FaultBenchRow(backend: "none", path: .dispatch, fault: kind.rawValue, handler: .swift, depth: depth)
            row.latency = LatencySummary(samples: samples)
            if allocationCounter != nil { row.allocationsPerFault = Double(allocAfter &- allocBefore) / Double(n) }
            row.note = "per call, including one clock read"
            return row
        } catch {
            return failed("none", .dispatch, kind, .swift, depth, "\(error)")
        }
    }

    /// Two back-to-back CLOCK_MONOTONIC reads: what one timestamp costs.
    func clockRow() -> FaultBenchRow {
        let n = 100_000
        let samples = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: n)
        defer { samples.deallocate() }
        for i in 0..<n {
            let a = monotonicNanoseconds()
            let b = monotonicNanoseconds()
            samples[i] = b &- a
        }
        var row = FaultBenchRow(backend: "host", path: .clock, fault: "clock_gettime(CLOCK_MONOTONIC)", handler: nil, depth: 0)
        row.latency = LatencySummary(samples: samples)
        return row
    }

    /// The C floor (`CFaultFloor`): #UD round trips in a minimal C KVM loop, same iterations as KVM rows.
    func cFloorRow() -> FaultBenchRow {
        let n = settings.kvmIterations, warm = settings.warmup(for: .kvm)
        let samples = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: n)
        defer { samples.deallocate() }
        var sync: Int32 = 0
        let rc = kvmDevice.withCString { cfloor_run($0, UInt64(warm), UInt64(n), samples.baseAddress, &sync) }
        guard rc == 0 else {
            return failed("c", .cFloor, .invalidOpcode, nil, 0, String(cString: cfloor_last_error()))
        }
        var row = FaultBenchRow(backend: "c", path: .cFloor, fault: BenchFaultKind.invalidOpcode.rawValue, handler: nil, depth: 0)
        row.latency = LatencySummary(samples: samples)
        row.note = sync != 0 ? "registers through kvm_run sync regs" : "registers through KVM_GET/SET_REGS"
        return row
    }

    /// Guest instructions per second on the ALU loop: the median of `aluRuns` runs.
    func aluRow(_ backend: BackendKind) -> ThroughputRow {
        let iterations = backend == .kvm ? settings.kvmALUIterations : settings.interpreterALUIterations
        let per = BenchGuests.aluInstructionsPerIteration
        var runs: [(seconds: Double, instructions: UInt64)] = []
        var row = ThroughputRow(backend: backend.rawValue, loop: "alu", iterations: UInt64(iterations),
                                instructionsPerIteration: per, instructions: 0, counted: backend != .kvm, seconds: 0,
                                instructionsPerSecond: 0, nsPerInstruction: 0, runs: 0, status: "ok", note: nil)
        do {
            for _ in 0..<max(1, settings.aluRuns) {
                let machine = try makeMachine(backend, image: BenchGuests.aluLoop(iterations: UInt32(iterations)))
                let report = machine.run()
                guard report.exit.reason == .halt else {
                    row.status = "failed"
                    row.note = "ended with \(report.exit.reason.rawValue): \(report.exit.message)"
                    return row
                }
                let counted = report.statistics.instructions
                runs.append((report.statistics.wallSeconds,
                             backend == .kvm || counted == 0 ? UInt64(iterations * per) : counted))
            }
        } catch {
            row.status = "failed"
            row.note = error.description
            return row
        }
        let median = runs.sorted { $0.seconds < $1.seconds }[runs.count / 2]
        row.runs = runs.count
        row.seconds = median.seconds
        row.instructions = median.instructions
        row.instructionsPerSecond = median.seconds > 0 ? Double(median.instructions) / median.seconds : 0
        row.nsPerInstruction = median.instructions > 0 ? median.seconds * 1e9 / Double(median.instructions) : 0
        if backend == .kvm { row.note = "KVM does not count instructions: iterations × \(per)" }
        return row
    }
}
