import Foundation
import Testing
@testable import VMMHarness

/// A port device for tests: reads answer 'A', 'B', 'C' ... in turn; writes are recorded.
final class RecordingPortDevice: PortDevice {
    let name = "test device"
    var writes: [(port: UInt16, size: Int, value: UInt32)] = []
    var reads: [(port: UInt16, size: Int)] = []
    var next: UInt32 = 0x41
    var stopOnWrite = false

    func write(port: UInt16, size: Int, value: UInt32) -> BusEvent {
        writes.append((port, size, value))
        return stopOnWrite ? .stop(reason: .fatalError, message: "device stop") : .none
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        reads.append((port, size))
        defer { next &+= 1 }
        return next
    }
}

final class RecordingMMIODevice: MMIODevice {
    let name = "test MMIO"
    var writes: [(address: UInt64, length: Int, value: UInt64)] = []
    func write(address: UInt64, length: Int, value: UInt64) -> BusEvent {
        writes.append((address, length, value))
        return .none
    }
    func read(address: UInt64, length: Int) -> UInt64 { 0 }
}

/// The exit handler as a pure function, driven with made-up exits and no backend.
struct ExitHandlingTests {
    @Test func runtimePortsBecomeTheirActions() {
        let console = DebugConsole()
        let bus = DeviceBus.runtime(console: console)
        #expect(ExitHandling.action(for: .portOut(port: 0x86, size: 1, value: 0), bus: bus) == .dispatchFault(vector: 6))
        #expect(ExitHandling.action(for: .portOut(port: 0x80 + 0x5F, size: 1, value: 0), bus: bus) == .dispatchFault(vector: 0x5F))
        #expect(ExitHandling.action(for: .portOut(port: 0xF0, size: 1, value: 0), bus: bus) == .runtimeCall)
        #expect(ExitHandling.action(for: .portOut(port: 0xF1, size: 1, value: 0), bus: bus) == .hostAreaReached(port: 0xF1))
        #expect(ExitHandling.action(for: .portOut(port: 0xF2, size: 1, value: 0), bus: bus) == .hostAreaReached(port: 0xF2))
        #expect(ExitHandling.action(for: .portOut(port: 0xE9, size: 1, value: 0x68), bus: bus) == .resume)
        #expect(ExitHandling.action(for: .portOut(port: 0xE9, size: 1, value: 0x69), bus: bus) == .resume)
        #expect(console.output == "hi")
    }

    @Test func unclaimedPortsFloatHighAndIgnoreWrites() {
        let bus = DeviceBus.runtime(console: DebugConsole())
        #expect(ExitHandling.action(for: .portIn(port: 0x1234, size: 1), bus: bus) == .answerPortIn(value: 0xFF))
        #expect(ExitHandling.action(for: .portIn(port: 0x1234, size: 2), bus: bus) == .answerPortIn(value: 0xFFFF))
        #expect(ExitHandling.action(for: .portIn(port: 0x1234, size: 4), bus: bus) == .answerPortIn(value: 0xFFFF_FFFF))
        #expect(ExitHandling.action(for: .portOut(port: 0x1234, size: 4, value: 7), bus: bus) == .resume)
        // Just outside the stub range (E0h) is an ordinary, unclaimed port.
        #expect(ExitHandling.action(for: .portOut(port: 0xE0, size: 1, value: 0), bus: bus) == .resume)
    }

    @Test func aDeviceOnTheBusNeedsNoRunLoopCode() throws {
        let bus = DeviceBus.runtime(console: DebugConsole())
        let d = RecordingPortDevice()
        try bus.attach(d, ports: 0x300...0x303)
        #expect(ExitHandling.action(for: .portIn(port: 0x301, size: 1), bus: bus) == .answerPortIn(value: 0x41))
        #expect(ExitHandling.action(for: .portOut(port: 0x302, size: 2, value: 0xBEEF), bus: bus) == .resume)
        #expect(d.writes.count == 1 && d.writes[0].port == 0x302 && d.writes[0].size == 2 && d.writes[0].value == 0xBEEF)
        d.stopOnWrite = true
        #expect(ExitHandling.action(for: .portOut(port: 0x300, size: 1, value: 1), bus: bus)
                == .finish(reason: .fatalError, message: "device stop"))
        // A port already claimed is refused, naming the owner.
        #expect(throws: DeviceBusError.portTaken(port: 0xE9, by: "debug console")) {
            try bus.attach(RecordingPortDevice(), ports: 0xE0...0xEF)
        }
        #expect(throws: DeviceBusError.portTaken(port: 0x303, by: "test device")) {
            try bus.attach(RecordingPortDevice(), ports: 0x303...0x304)
        }
    }

    @Test func mmioGoesToItsDeviceOrEndsTheRun() throws {
        let bus = DeviceBus()
        let d = RecordingMMIODevice()
        try bus.attach(d, at: 0xFEE0_0000..<0xFEE0_1000)
        #expect(throws: DeviceBusError.rangeOverlaps(start: 0xFEE0_0800, by: "test MMIO")) {
            try bus.attach(RecordingMMIODevice(), at: 0xFEE0_0800..<0xFEE0_2000)
        }
        #expect(ExitHandling.action(for: .mmio(address: 0xFEE0_00B0, isWrite: true, length: 4, data: 0), bus: bus) == .resume)
        #expect(d.writes.count == 1 && d.writes[0].address == 0xFEE0_00B0)
        #expect(ExitHandling.action(for: .mmio(address: 0xFFFF_FFFC, isWrite: false, length: 4, data: 0), bus: bus)
                == .unclaimedMMIO(address: 0xFFFF_FFFC, isWrite: false, length: 4))
        if case .finish(.backendError, _) = ExitHandling.action(for: .mmio(address: 0xFEE0_0020, isWrite: false, length: 4, data: 0), bus: bus) {} else {
            Issue.record("an MMIO read from a device must say that no backend completes it yet")
        }
    }

    @Test func everyOtherExitIsDecidedFromTheExitAlone() {
        let bus = DeviceBus()
        #expect(ExitHandling.action(for: .halt, bus: bus) == .finish(reason: .halt, message: "the guest executed HLT"))
        #expect(ExitHandling.action(for: .interrupted, bus: bus) == .resume)
        #expect(ExitHandling.action(for: .breakpoint(address: 0x1234), bus: bus) == .breakpoint(address: 0x1234))
        #expect(ExitHandling.action(for: .shutdown(reason: "triple fault"), bus: bus) == .finish(reason: .shutdown, message: "triple fault"))
        func reason(_ e: GuestExit) -> ExitReason? {
            if case let .finish(r, _) = ExitHandling.action(for: e, bus: bus) { return r }
            return nil
        }
        #expect(reason(.failEntry(reason: 0x21)) == .failEntry)
        #expect(reason(.internalError(suberror: 1, data: [], instructionBytes: [0xCF])) == .emulationFailure)
        #expect(reason(.internalError(suberror: 3, data: [1], instructionBytes: [])) == .backendError)
        #expect(reason(.assistFailed(instructionBytes: [0x0F, 0xFF], address: 0x10_0000, why: "no")) == .emulationFailure)
        #expect(reason(.singleStep(address: 0x10_0002)) == .backendError)
        #expect(reason(.unknown(reason: 99)) == .backendError)
    }
}

/// The frame codec: one layout table, reading without side effects, writing back and reading
/// back both layouts.
struct FrameCodecTests {
    static func stubState(esp: UInt32) throws -> CPUState {
        var s = Machine.initialState(entry: MemoryMap.imageBase, layout: try RuntimeImage.layout())
        s.esp = esp
        return s
    }

    static func sampleFrame(cs: UInt16, eflags: UInt32 = 0x202) -> ClientRegisters {
        var f = ClientRegisters()
        f.edi = 1; f.esi = 2; f.ebp = 3; f.pushadESP = 4; f.ebx = 5; f.edx = 6; f.ecx = 7; f.eax = 8
        f.error = 0x10; f.eip = 0x10_0123; f.cs = cs; f.eflags = eflags
        f.esp = 0x2000; f.ss = cs == Selectors.ring3Code ? Selectors.ring3Data : Selectors.ring0Data
        f.es = 0x30; f.ds = 0x30; f.fs = 0x30; f.gs = 0x30
        return f
    }

    @Test(arguments: [Selectors.ring0Code, Selectors.ring3Code])
    func readingAFaultWritesNothing(cs: UInt16) throws {
        let memory = try GuestMemory(size: 4 << 20)
        let frameAt: UInt32 = 0x8_0000
        // What the stub leaves: PUSHAD image, error, EIP, CS, EFLAGS (+ ESP, SS from ring 3).
        try memory.writeBytes(frameAt - 0x40, [UInt8](repeating: 0xA5, count: 0x100))
        try Self.sampleFrame(cs: cs).store(to: memory, at: frameAt, count: cs & 3 == 0 ? 0x30 : 0x38)
        let before = try memory.readBytes(frameAt - 0x40, count: 0x100)
        let codec = FrameCodec(memory: memory)
        let event = try codec.readFault(vector: 6, stubState: Self.stubState(esp: frameAt))
        #expect(try memory.readBytes(frameAt - 0x40, count: 0x100) == before)
        #expect(event.frame.eip == 0x10_0123 && event.frame.cs == cs && event.frame.eax == 8)
        #expect(event.ring == UInt8(cs & 3))
        if cs & 3 == 0 {
            #expect(event.layout == .reentrant)
            #expect(event.frame.esp == frameAt + 0x30 && event.frame.ss == Selectors.ring0Data)
        } else {
            #expect(event.layout == .full)
            #expect(event.frame.esp == 0x2000 && event.frame.ss == Selectors.ring3Data)
        }
        #expect(event.frame.ds == Selectors.ring0Data)   // the stub's selectors
    }

    @Test(arguments: [Selectors.ring0Code, Selectors.ring3Code])
    func storeAndLoadAgreeInBothLayouts(cs: UInt16) throws {
        let memory = try GuestMemory(size: 4 << 20)
        let codec = FrameCodec(memory: memory)
        let at: UInt32 = 0x8_0000
        let paging = try Self.stubState(esp: at)
        var f = Self.sampleFrame(cs: cs)
        f.ds = 0x23; f.es = 0x2B; f.fs = 0x33; f.gs = 0x3B
        try codec.store(f, at: at, pagingState: paging)
        var template = Self.sampleFrame(cs: cs)
        template.eax = 0xDEAD   // overwritten by the load
        let back = try codec.load(at: at, template: template, pagingState: paging)
        #expect(back == f)
        // The one table: the re-entrant layout's segments lie below EBP, the full one's at Client_DS...
        let slots = ClientFrameLayout(f).segmentSlots
        #expect(try memory.read32(UInt32(Int64(at) + Int64(slots.ds))) == 0x23)
        #expect(try memory.read32(UInt32(Int64(at) + Int64(slots.gs))) == 0x3B)
        if cs & 3 == 0 {
            #expect(slots == (-4, -8, -12, -16))
            // Client_ESP/SS are not in memory for a re-entrant frame: nothing was written there.
            #expect(try memory.read32(at + 0x30) == 0)
        } else {
            #expect(slots == (0x3C, 0x38, 0x40, 0x44))
            #expect(try memory.read32(at + 0x30) == 0x2000)
        }
    }

    @Test func aFrameOutsideGuestMemoryIsAProtocolError() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let codec = FrameCodec(memory: memory)
        #expect(throws: HarnessError.self) { try codec.readFault(vector: 6, stubState: Self.stubState(esp: 0xFFFF_FFF0)) }
        #expect(throws: HarnessError.self) { try codec.store(Self.sampleFrame(cs: 0x28), at: 0xFFFF_FFF0, pagingState: Self.stubState(esp: 0)) }
        var ring3 = try Self.stubState(esp: 0x1000)
        ring3.cs = .flatCode(selector: Selectors.ring3Code, dpl: 3)
        #expect(throws: HarnessError.self) { try codec.readFault(vector: 6, stubState: ring3) }
    }
}

/// Machine options are checked when a machine is made.
struct MachineOptionsTests {
    @Test(arguments: [-1.0, 0, .nan, .infinity, 1e12])
    func badTimeoutsAreRefused(timeout: Double) throws {
        var o = MachineOptions()
        o.timeout = timeout
        #expect(throws: HarnessError.self) { try o.validate() }
        let image = GuestImage(name: "hlt", bytes: [0xF4])
        #expect(throws: HarnessError.self) { try Harness.makeMachine(image: image, choice: .interpreter, options: o) }
    }

    @Test func goodOptionsPass() throws {
        var o = MachineOptions()
        try o.validate()
        o.timeout = nil
        try o.validate()
        o.timeout = 0.25
        try o.validate()
    }
}

/// Guest calls through the one run loop: nesting, the depth limit and breakpoints restored.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble guests"))
struct GuestCallTests {
    // outer: VMMcall (INT 20h + dword), then jump to `outer_prev` (the outer call's previous).
    // inner: jump to `inner_prev` at once. Both "previous" labels hold HLT: reaching one without
    // its breakpoint armed would be an error ("executed HLT").
    static let source = """
            .globl _start
        _start:
            hlt
        outer:
            int $0x20
            .long 0
            jmp outer_prev
        inner:
            jmp inner_prev
        outer_prev:
            hlt
        inner_prev:
            hlt
        """

    final class Nesting: FaultHandling {
        weak var machine: Machine?
        var symbols: [String: UInt32] = [:]
        var depth = 0
        var deepest = 0
        var errors: [String] = []
        var breakpointAfterInner: [UInt32?] = []

        func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
            guard event.vector == 0x20, let machine, let outer = symbols["outer"], let outerPrev = symbols["outer_prev"],
                  let inner = symbols["inner"], let innerPrev = symbols["inner_prev"] else {
                return .unhandled(report: "unexpected \(event.vector)")
            }
            frame.eip &+= 4   // past the dword
            depth += 1
            deepest = max(deepest, depth)
            defer { depth -= 1 }
            do {
                var s = try machine.backend.readState()
                s.esp = event.frameAddress &- 0x100
                // Every VMMcall runs a nested `inner` call, and, below the depth limit, one more
                // nested `outer` (whose VMMcall nests again).
                _ = try machine.callGuest(inner, state: s, previous: innerPrev, purpose: "inner at depth \(depth)")
                breakpointAfterInner.append(machine.armedBreakpoint)
                s.esp &-= 0x100
                _ = try machine.callGuest(outer, state: s, previous: outerPrev, purpose: "outer at depth \(depth)")
            } catch {
                errors.append(error.description)
            }
            return .resume(handledBy: "nesting test")
        }
    }

    @Test(arguments: BackendKind.allCases)
    func nestedCallsGiveTheOuterCallItsBreakpointBackAndStopAtTheDepthLimit(backend: BackendKind) throws {
        try TestSupport.requireBackend(backend, needs: [])
        let image = try GuestAssembler.assemble(source: Self.source)
        var o = MachineOptions()
        o.backend = TestSupport.backendOptions
        let machine = try Harness.makeMachine(image: image, choice: backend == .kvm ? .kvm : .interpreter, options: o)
        let nesting = Nesting()
        nesting.machine = machine
        nesting.symbols = image.symbols
        machine.faultHandling = nesting
        guard let outer = image.symbols["outer"], let outerPrev = image.symbols["outer_prev"] else {
            Issue.record("symbols missing")
            return
        }
        let start = try machine.backend.readState()
        let (end, _) = try machine.callGuest(outer, state: start, previous: outerPrev, purpose: "the outermost call")
        #expect(end == .reachedPrevious)
        // Depth 1 is the outermost call; each VMMcall nests two more levels until the limit.
        #expect(nesting.deepest == Machine.maximumGuestCallDepth - 1 || nesting.deepest == Machine.maximumGuestCallDepth)
        #expect(nesting.errors.contains { $0.contains("nested too deeply") }, "\(nesting.errors)")
        #expect(nesting.errors.allSatisfy { $0.contains("nested too deeply") }, "\(nesting.errors)")
        // After each inner call the outer call's breakpoint (outer_prev) is armed again.
        #expect(!nesting.breakpointAfterInner.isEmpty)
        #expect(nesting.breakpointAfterInner.allSatisfy { $0 == outerPrev })
        // The state from before the outermost call is back.
        #expect(try machine.backend.readState() == start)
    }
}

/// String I/O (INS/OUTS with REP, count above 1) through the device bus, element by element.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble guests"))
struct StringIOTests {
    static let source = """
            .globl _start
        _start:
            cld
            movl $buf, %edi
            movl $5, %ecx
            movw $0x300, %dx
            rep insb
            movl $buf, %esi
            movl $5, %ecx
            movw $0xE9, %dx
            rep outsb
            movl $words, %esi
            movl $3, %ecx
            movw $0x302, %dx
            rep outsw
            movl $dwords, %esi
            movw $0x300, %dx
            outsl
            hlt
        buf:
            .space 8
        words:
            .word 0x1111, 0x2222, 0x3333
        dwords:
            .long 0xCAFEF00D
        """

    struct Outcome: Equatable {
        var buffer: [UInt8]
        var console: String
        var writes: [String]
        var reads: Int
        var ecx: UInt32, esi: UInt32, edi: UInt32
        var exit: ExitReason
    }

    static func run(on backend: BackendKind) throws -> Outcome {
        let image = try GuestAssembler.assemble(source: source)
        var o = MachineOptions()
        o.backend = TestSupport.backendOptions
        let machine = try Harness.makeMachine(image: image, choice: backend == .kvm ? .kvm : .interpreter, options: o)
        let device = RecordingPortDevice()
        try machine.bus.attach(device, ports: 0x300...0x303)
        let report = machine.run()
        let buf = image.symbols["buf"] ?? 0
        return Outcome(buffer: try machine.memory.readBytes(buf, count: 8), console: report.console,
                       writes: device.writes.map { "\(hex($0.port)):\($0.size):\(hex($0.value))" }, reads: device.reads.count,
                       ecx: report.finalRegisters?.ecx ?? 0xFFFF, esi: report.finalRegisters?.esi ?? 0,
                       edi: report.finalRegisters?.edi ?? 0, exit: report.exit.reason)
    }

    @Test(arguments: BackendKind.allCases)
    func repInsAndOutsGoThroughTheBusElementByElement(backend: BackendKind) throws {
        try TestSupport.requireBackend(backend, needs: [])
        let image = try GuestAssembler.assemble(source: Self.source)
        let r = try Self.run(on: backend)
        #expect(r.exit == .halt)
        #expect(r.buffer == Array("ABCDE".utf8) + [0, 0, 0])
        #expect(r.reads == 5)
        #expect(r.console == "ABCDE")
        #expect(r.writes == ["00000302h:2:00001111h", "00000302h:2:00002222h", "00000302h:2:00003333h",
                             "00000300h:4:CAFEF00Dh"])
        #expect(r.ecx == 0)
        #expect(r.edi == (image.symbols["buf"] ?? 0) + 5)
        #expect(r.esi == (image.symbols["dwords"] ?? 0) + 4)
    }

    @Test func bothBackendsAgree() throws {
        try TestSupport.requireBackend(.kvm, needs: [])
        #expect(try Self.run(on: .kvm) == Self.run(on: .interpreter))
    }
}

/// harness.inc's runtime-call macros assemble to the same bytes in AT&T and Intel syntax.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble guests"))
struct HarnessMacroSyntaxTests {
    @Test func runtimeCallMacrosAreSyntaxIndependent() throws {
        let body = """
                ENTER_RING3 user, RING3_STACK_TOP, 0x202
                RAISE_NMI
                RAISE_IRQ 3
                ENTER_V86 0x800, 0, 0x700, 0xFFE
            user:
                hlt
            """
        let att = try GuestAssembler.assemble(source: "#include \"harness.inc\"\n    .globl _start\n_start:\n" + body)
        let intel = try GuestAssembler.assemble(source: "#include \"harness.inc\"\n    .intel_syntax noprefix\n    .globl _start\n_start:\n" + body)
        #expect(att.bytes == intel.bytes)
        #expect(att.bytes.count == 22 + 7 + 12 + 27 + 1)
    }
}
