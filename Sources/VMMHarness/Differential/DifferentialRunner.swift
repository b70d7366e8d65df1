import Foundation

/// What one backend made of one generated program: how it ended, every fault, the final
/// registers and the program's data page and live stack.
public struct ProgramOutcome: Sendable, Equatable {
    /// One fault or trap the guest took (resumed by the runner).
    public struct Fault: Sendable, Equatable {
        public var vector: UInt8
        public var errorCode: UInt32
        public var eip: UInt32
        public var eflags: UInt32
    }
    public var exit: ExitReason
    public var exitMessage: String
    public var faults: [Fault]
    public var faultCount: Int
    public var registers: RegisterSnapshot?
    /// The data page after the run.
    public var data: [UInt8]
    /// The stack from the final ESP up to the initial stack top (empty if ESP is outside it).
    public var stack: [UInt8]
    /// Instructions the interpreter finished for KVM.
    public var assists: UInt64

    /// A one-line-per-register dump.
    public var registerDump: String {
        guard let r = registers else { return "(no registers)" }
        return "EAX=\(hex(r.eax, prefix: "")) EBX=\(hex(r.ebx, prefix: "")) ECX=\(hex(r.ecx, prefix: "")) EDX=\(hex(r.edx, prefix: ""))"
            + " ESI=\(hex(r.esi, prefix: "")) EDI=\(hex(r.edi, prefix: "")) EBP=\(hex(r.ebp, prefix: "")) ESP=\(hex(r.esp, prefix: ""))"
            + " EIP=\(hex(r.eip, prefix: "")) EFLAGS=\(hex(r.eflags, prefix: "")) exit=\(exit.rawValue) faults=\(faultCount)"
    }
}

/// The first instruction after which the backends disagree.
public struct DifferentialMismatch: Sendable, CustomStringConvertible {
    /// The program's seed.
    public var seed: UInt64
    /// Index of the first differing instruction (nil: could not be narrowed down).
    public var instructionIndex: Int?
    public var instruction: GeneratedInstruction?
    /// What differs (on the shortest failing prefix).
    public var differences: [String]
    public var kvm: ProgramOutcome
    public var interpreter: ProgramOutcome
    /// The program's listing.
    public var listing: String

    public var description: String {
        var s = "seed \(hex(seed, width: 16, prefix: "0x")): backends disagree"
        if let i = instructionIndex, let ins = instruction {
            s += " first after instruction #\(i) at \(hex(GeneratedProgram.codeBase + UInt32(ins.offset))): [\(ins.hexBytes)] \(ins.text)"
        }
        s += "\n  " + differences.joined(separator: "\n  ")
        s += "\n  kvm:         \(kvm.registerDump)\n  interpreter: \(interpreter.registerDump)"
        return s
    }
}

/// Runs generated programs on the KVM backend and on the interpreter and compares them.
///
/// Faults: every fault or trap is resumed by a `ClosureFaultHandling` that moves Client_EIP past
/// the faulting instruction (its length from `X86Decoder`); traps (INT3 #BP, INTO #OF) already
/// point past it and resume as they are. So a program always runs to its final HLT, and the
/// comparison sees every fault on the way (vector, error code, EIP, EFLAGS).
///
/// KVM: one VM and vCPU over one guest memory is created once and reused for every program (a new
/// `Machine` each time reloads the runtime, the image and the initial CPU state; the stack page is
/// cleared), because creating a VM per program costs more than running it.
public final class DifferentialRunner {
    /// Guest memory for every run: 4 MiB holds the runtime, the stacks and the program.
    public static let memorySize = 4 << 20
    private var kvmBackend: KVMBackend?
    private var kvmMemory: GuestMemory?
    private let assist: RecordingAssist?
    /// How many times each instruction (first byte after prefixes, as hex) was finished by the
    /// instruction assist on KVM, over every run of this runner.
    public var assistedOpcodes: [String: Int] { assist?.counts ?? [:] }
    private let host = HostDescription.current(devicePath: BackendOptions(environment: ProcessInfo.processInfo.environment).kvmDevicePath)

    /// Creates a runner; `kvm` false runs only the interpreter.
    public init(kvm: Bool) throws(HarnessError) {
        assist = Harness.makeAssist().map(RecordingAssist.init)
        if kvm {
            let memory = try GuestMemory(size: Self.memorySize)
            kvmMemory = memory
            do {
                kvmBackend = try KVMBackend(memory: memory, options: BackendOptions(environment: ProcessInfo.processInfo.environment),
                                            assist: assist)
            } catch {
                throw .unsupported("KVM backend: \(KVMDiagnosis.explain(error))")
            }
        }
    }

    /// The fault handling: skip the faulting instruction, resume traps as they are.
    static func skipper(_ code: [UInt8]) -> ClosureFaultHandling {
        ClosureFaultHandling { event, frame in
            if event.vector == 3 || event.vector == 4 { return true }
            guard frame.eip >= GeneratedProgram.codeBase else { return false }
            let offset = Int(frame.eip - GeneratedProgram.codeBase)
            guard offset < code.count else { return false }
            switch X86Decoder.decode(Array(code[offset..<min(offset + 15, code.count)])) {
            case let .success(d):
                frame.eip &+= UInt32(d.length)
                return true
            case .failure:
                return false
            }
        }
    }

    /// Runs `image` (from `program`) on one backend.
    public func run(_ image: GuestImage, on kind: BackendKind) throws(HarnessError) -> ProgramOutcome {
        var options = MachineOptions()
        options.memorySize = Self.memorySize
        options.timeout = 5
        options.faultStormLimit = 1 << 20
        options.recordFrames = false
        let machine: Machine
        if kind == .kvm {
            guard let backend = kvmBackend, let memory = kvmMemory else { throw .unsupported("this runner has no KVM backend") }
            do { try memory.writeBytes(GeneratedProgram.stackTop - 0x1000, [UInt8](repeating: 0, count: 0x1000)) } catch {
                throw .memory(error)
            }
            machine = try Machine(image: image, memory: memory, backend: backend,
                                  backendReport: BackendReport(kind: .kvm, reason: "differential", host: host), options: options)
            machine.assist = assist
        } else {
            machine = try Harness.makeMachine(image: image, choice: .interpreter, options: options)
        }
        machine.faultHandling = Self.skipper(Array(image.bytes.prefix(GeneratedProgram.codeSize)))
        let assistsBefore = machine.backend.statistics.assists
        let report = machine.run()
        let data = (try? machine.memory.readBytes(GeneratedProgram.dataBase, count: GeneratedProgram.dataSize)) ?? []
        var stack: [UInt8] = []
        if let esp = report.finalRegisters?.esp, esp <= GeneratedProgram.stackTop, esp >= GeneratedProgram.stackTop - 0x1000 {
            stack = (try? machine.memory.readBytes(esp, count: Int(GeneratedProgram.stackTop - esp))) ?? []
        }
        return ProgramOutcome(exit: report.exit.reason, exitMessage: report.exit.message,
                              faults: report.faults.map { .init(vector: $0.vector, errorCode: $0.errorCode, eip: $0.eip, eflags: $0.eflags) },
                              faultCount: report.faultCount, registers: report.finalRegisters, data: data, stack: stack,
                              assists: report.statistics.assists &- assistsBefore)
    }

    /// The differences between two outcomes of `program`, with flags the program leaves undefined
    /// masked (at each fault's EIP, and at the HLT the run ended on).
    public static func differences(_ a: ProgramOutcome, _ b: ProgramOutcome, program: GeneratedProgram) -> [String] {
        var d: [String] = []
        if a.exit != b.exit { d.append("exit: kvm \(a.exit.rawValue) (\(a.exitMessage)) vs interpreter \(b.exit.rawValue) (\(b.exitMessage))") }
        if a.faultCount != b.faultCount { d.append("fault count: kvm \(a.faultCount) vs interpreter \(b.faultCount)") }
        for (i, (x, y)) in zip(a.faults, b.faults).enumerated() {
            let mask = ~program.undefinedFlags(at: x.eip)
            if x.vector != y.vector || x.errorCode != y.errorCode || x.eip != y.eip || x.eflags & mask != y.eflags & mask {
                d.append("fault #\(i): kvm \(ExceptionNames.name(x.vector))(\(hex(x.errorCode))) at \(hex(x.eip)) EFLAGS \(hex(x.eflags))"
                         + " vs interpreter \(ExceptionNames.name(y.vector))(\(hex(y.errorCode))) at \(hex(y.eip)) EFLAGS \(hex(y.eflags))")
                break
            }
        }
        if let r = a.registers, let s = b.registers {
            let pairs: [(String, UInt32, UInt32)] = [
                ("EAX", r.eax, s.eax), ("EBX", r.ebx, s.ebx), ("ECX", r.ecx, s.ecx), ("EDX", r.edx, s.edx),
                ("ESI", r.esi, s.esi), ("EDI", r.edi, s.edi), ("EBP", r.ebp, s.ebp), ("ESP", r.esp, s.esp),
                ("EIP", r.eip, s.eip), ("CS", UInt32(r.cs), UInt32(s.cs)), ("SS", UInt32(r.ss), UInt32(s.ss)),
                ("DS", UInt32(r.ds), UInt32(s.ds)), ("ES", UInt32(r.es), UInt32(s.es)), ("FS", UInt32(r.fs), UInt32(s.fs)),
                ("GS", UInt32(r.gs), UInt32(s.gs)),
            ]
            for (name, x, y) in pairs where x != y { d.append("\(name): kvm \(hex(x)) vs interpreter \(hex(y))") }
            // HLT has run: EIP is one past it.
            let undefined = a.exit == .halt ? program.undefinedFlags(at: r.eip &- 1) : ArithmeticFlags.all
            if r.eflags & ~undefined != s.eflags & ~undefined {
                d.append("EFLAGS: kvm \(hex(r.eflags)) vs interpreter \(hex(s.eflags)) (undefined here: \(hex(undefined, width: 3)))")
            }
        } else if (a.registers == nil) != (b.registers == nil) {
            d.append("registers: only one backend gave them")
        }
        if a.data != b.data {
            let first = zip(a.data, b.data).enumerated().first { $0.element.0 != $0.element.1 }
            if let f = first {
                d.append("data at \(hex(GeneratedProgram.dataBase + UInt32(f.offset))): kvm \(hex(f.element.0, width: 2)) vs interpreter \(hex(f.element.1, width: 2))")
            } else {
                d.append("data: sizes differ")
            }
        }
        if a.stack != b.stack { d.append("stack contents differ") }
        return d
    }

    /// Runs `program` on both backends; nil when they agree, otherwise the mismatch narrowed down
    /// to the first differing instruction by running prefixes (binary search).
    public func compare(_ program: GeneratedProgram) throws(HarnessError) -> (mismatch: DifferentialMismatch?, assists: UInt64) {
        try compare(program, interpreterRuns: program)
    }

    /// `compare(_:)`, with the interpreter running `variant` (the same program with an instruction
    /// changed: the tests check that the comparison and the narrowing find it).
    func compare(_ program: GeneratedProgram, interpreterRuns variant: GeneratedProgram) throws(HarnessError)
        -> (mismatch: DifferentialMismatch?, assists: UInt64)
    {
        let k = try run(program.image(), on: .kvm)
        let i = try run(variant.image(), on: .interpreter)
        let diff = Self.differences(k, i, program: program)
        guard !diff.isEmpty else { return (nil, k.assists) }
        // Smallest prefix length whose run differs: prefix(0) is a lone HLT; the full program differs.
        var lo = 0, hi = program.instructions.count
        var best = (diff, k, i)
        while lo + 1 < hi {
            let mid = (lo + hi) / 2
            let pk = try run(program.image(prefix: mid), on: .kvm)
            let pi = try run(variant.image(prefix: mid), on: .interpreter)
            let pd = Self.differences(pk, pi, program: program)
            if pd.isEmpty { lo = mid } else { hi = mid; best = (pd, pk, pi) }
        }
        let index = hi - 1
        let ins = program.instructions.indices.contains(index) ? program.instructions[index] : nil
        return (DifferentialMismatch(seed: program.seed, instructionIndex: ins == nil ? nil : index, instruction: ins,
                                     differences: best.0, kvm: best.1, interpreter: best.2, listing: program.listing), k.assists)
    }
}

/// Counts the instructions KVM left to the assist, by opcode, and passes them on.
final class RecordingAssist: InstructionAssist {
    let inner: any InstructionAssist
    var counts: [String: Int] = [:]
    init(_ inner: any InstructionAssist) { self.inner = inner }

    func assist(state: inout CPUState, memory: GuestMemory) -> AssistOutcome {
        if let bytes = try? memory.readBytes(state.eip &+ state.cs.base, count: 4) {
            var i = 0
            while i < 3, [0x66, 0x67, 0xF2, 0xF3].contains(bytes[i]) { i += 1 }
            var key = hex(bytes[i], width: 2, prefix: "")
            if bytes[i] == 0x0F { key += " " + hex(bytes[i + 1], width: 2, prefix: "") }
            counts[key, default: 0] += 1
        }
        return inner.assist(state: &state, memory: memory)
    }

    func deliverInterrupt(vector: UInt8, state: inout CPUState, memory: GuestMemory, inhibited: Bool) -> InterruptDelivery {
        inner.deliverInterrupt(vector: vector, state: &state, memory: memory, inhibited: inhibited)
    }
}

/// A batch of generated programs run on both backends (the long differential run).
public enum DifferentialCampaign {
    /// The seed of program `n` of a campaign started from `seed`.
    public static func programSeed(_ seed: UInt64, _ n: Int) -> UInt64 {
        var r = SplitMix64(seed: seed &+ UInt64(n) &* 0x9E37_79B9)
        return r.next()
    }

    /// Summary of a campaign.
    public struct Result: Sendable {
        public var programs = 0
        public var instructions = 0
        public var faults = 0
        public var assists: UInt64 = 0
        public var seconds = 0.0
        public var mismatches: [DifferentialMismatch] = []
        /// Instructions finished by the assist on KVM, by opcode.
        public var assistedOpcodes: [String: Int] = [:]
    }

    /// Runs `count` programs from `seed` on both backends; stops collecting after `maxMismatches`.
    public static func run(count: Int, seed: UInt64, length: Int = 48, maxMismatches: Int = 20,
                           progress: ((Int, Result) -> Void)? = nil) throws(HarnessError) -> Result {
        let runner = try DifferentialRunner(kvm: true)
        var result = Result()
        let start = DispatchTime.now().uptimeNanoseconds
        for n in 0..<count {
            let program = ProgramGenerator(seed: programSeed(seed, n), length: length).generate()
            let (mismatch, assists) = try runner.compare(program)
            result.programs += 1
            result.instructions += program.instructions.count + 1
            result.faults += program.instructions.filter(\.mayFault).count
            result.assists += assists
            if let mismatch, result.mismatches.count < maxMismatches { result.mismatches.append(mismatch) }
            progress?(n, result)
        }
        result.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        result.assistedOpcodes = runner.assistedOpcodes
        return result
    }
}
