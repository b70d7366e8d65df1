import VMMHarness
import Foundation
import Histogram

/// A kind of guest fault the fault benchmark raises in a loop.
public enum BenchFaultKind: String, CaseIterable, Codable, Sendable {
    /// `UD2`: #UD (06h), no error code; the handler skips the two bytes.
    case invalidOpcode = "ud"
    /// `DIV EBX` with EBX = 0: #DE (00h); the handler skips the two bytes.
    case divideError = "de"
    /// `MOV DS, AX` with a selector beyond the GDT limit: #GP (0Dh) with the selector as error code.
    case generalProtection = "gp"
    /// `INT 30h`: a software interrupt; the frame's EIP is already past it, the handler changes nothing.
    case softwareInterrupt = "int"
    /// `INT 20h` followed by a service dword, the Windows 9x VMMcall (here Get_Cur_VM_Handle, which returns EBX only). The
    /// VMM serves it from its service table (not through the fault chains) and resumes after the
    /// dword, so the chain depth does not apply to it.
    case vmmCall = "vmmcall"

    /// Interrupt vector the fault arrives on.
    public var vector: UInt8 {
        switch self {
        case .invalidOpcode: return 0x06
        case .divideError: return 0x00
        case .generalProtection: return 0x0D
        case .softwareInterrupt: return 0x30
        case .vmmCall: return 0x20
        }
    }

    /// The faulting instruction (and, for VMMcall, the service dword after it).
    public var instructionBytes: [UInt8] {
        switch self {
        case .invalidOpcode: return [0x0F, 0x0B]                         // ud2
        case .divideError: return [0xF7, 0xF3]                           // div ebx
        case .generalProtection: return [0x8E, 0xD8]                     // mov ds, ax
        case .softwareInterrupt: return [0xCD, 0x30]                     // int 30h
        case .vmmCall: return [0xCD, 0x20, 0x01, 0x00, 0x01, 0x00]       // int 20h; dd 00010001h (Get_Cur_VM_Handle: EBX only)
        }
    }

    /// How far the processing handler advances `Client_EIP` so the guest continues after the fault.
    public var resumeAdvance: UInt32 {
        switch self {
        case .invalidOpcode, .divideError, .generalProtection: return 2  // faults: EIP at the instruction
        case .softwareInterrupt: return 0                                // traps: EIP already past INT n
        case .vmmCall: return 4                                          // past the service dword
        }
    }

    /// The selector `MOV DS, AX` loads for #GP: index 20h, beyond the runtime's 8-entry GDT.
    public static let badSelector: UInt16 = 0x0100

    /// Short human name for tables and charts.
    public var label: String {
        switch self {
        case .invalidOpcode: return "#UD (UD2)"
        case .divideError: return "#DE (DIV by 0)"
        case .generalProtection: return "#GP (bad selector)"
        case .softwareInterrupt: return "INT 30h"
        case .vmmCall: return "VMMcall (INT 20h+dd)"
        }
    }
}

/// Who processes the fault in a benchmark row.
public enum BenchHandlerKind: String, CaseIterable, Codable, Sendable {
    /// Swift `FaultProc`s hooked with Hook_VMM_Fault; the last one processes by advancing Client_EIP.
    case swift
    /// Guest-code `FaultProc`s entered through `GuestFaultCallout`: not implemented by the machine
    /// yet, so listed as not available.
    case guest
}

/// What part of the system a fault row times.
public enum BenchPath: String, Codable, Sendable, CaseIterable {
    /// The whole harness: backend exit, `Machine` frame read, VMM dispatch through the chain, resume.
    case vmm
    /// `Machine` with a plain Swift closure as fault handling (no VMM).
    case machine
    /// The backend driven directly by the benchmark: exit, read the frame, advance EIP, resume.
    case backend
    /// `VirtualMachineManager.dispatchFault` alone on a synthetic frame (no guest, no backend).
    case dispatch
    /// The C program in `CFaultFloor` (its own VM; KVM only).
    case cFloor = "c-floor"
    /// A peer emulator run by a script (Unicorn).
    case peer
    /// Two back-to-back clock reads (the timer's own cost).
    case clock
}

/// Latency percentiles of one row, in nanoseconds, taken from an HdrHistogram (3 significant digits).
public struct LatencySummary: Codable, Sendable, Equatable {
    public var count: UInt64
    public var minNs: UInt64
    public var p50Ns: UInt64
    public var p90Ns: UInt64
    public var p99Ns: UInt64
    public var p999Ns: UInt64
    public var maxNs: UInt64
    public var meanNs: Double

    public init(count: UInt64, minNs: UInt64, p50Ns: UInt64, p90Ns: UInt64, p99Ns: UInt64, p999Ns: UInt64,
                maxNs: UInt64, meanNs: Double) {
        self.count = count; self.minNs = minNs; self.p50Ns = p50Ns; self.p90Ns = p90Ns; self.p99Ns = p99Ns
        self.p999Ns = p999Ns; self.maxNs = maxNs; self.meanNs = meanNs
    }

    /// Records `samples` (nanoseconds) in an HdrHistogram and reads the percentiles from it.
    /// Values above one minute are clamped to one minute. Nil for no samples.
    public init?<S: Sequence>(samples: S) where S.Element == UInt64 {
        var h = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: LatencySummary.highest,
                                  numberOfSignificantValueDigits: .three)
        for s in samples { _ = h.record(Swift.max(1, Swift.min(s, LatencySummary.highest))) }
        self.init(histogram: h)
    }

    /// Reads the percentiles of `histogram`. Nil when it is empty.
    public init?(histogram h: Histogram<UInt64>) {
        guard h.totalCount > 0 else { return nil }
        self.init(count: h.totalCount, minNs: h.min, p50Ns: h.valueAtPercentile(50), p90Ns: h.valueAtPercentile(90),
                  p99Ns: h.valueAtPercentile(99), p999Ns: h.valueAtPercentile(99.9), maxNs: h.max, meanNs: h.mean)
    }

    /// Largest value the histograms track: one minute in nanoseconds.
    public static let highest: UInt64 = 60_000_000_000
}

/// One row of fault round-trip results.
public struct FaultBenchRow: Codable, Sendable, Equatable {
    /// "kvm", "interpreter", "none" (dispatch only), "c" (the C floor) or the peer's name.
    public var backend: String
    public var path: BenchPath
    /// `BenchFaultKind.rawValue`, or a free-form name for peers and the clock row.
    public var fault: String
    public var handler: BenchHandlerKind?
    /// Handlers in the chain (the last processes, the others pass on); 0 where there is no chain.
    public var depth: Int
    /// "ok", "not available" or "failed".
    public var status: String
    /// Why a row is not available or failed, or a remark.
    public var note: String?
    public var latency: LatencySummary?
    /// Heap allocations per round trip (nil: not measured, e.g. the counter is not linked in).
    public var allocationsPerFault: Double?

    public init(backend: String, path: BenchPath, fault: String, handler: BenchHandlerKind?, depth: Int,
                status: String = "ok", note: String? = nil, latency: LatencySummary? = nil,
                allocationsPerFault: Double? = nil) {
        self.backend = backend; self.path = path; self.fault = fault; self.handler = handler; self.depth = depth
        self.status = status; self.note = note; self.latency = latency; self.allocationsPerFault = allocationsPerFault
    }

    /// A name for charts: "interpreter vmm #UD (UD2) d1".
    public var label: String {
        let f = BenchFaultKind(rawValue: fault)?.label ?? fault
        return "\(backend) \(path.rawValue) \(f)" + (depth > 0 ? " ×\(depth)" : "")
    }
}

/// Guest instruction throughput on the ALU loop.
public struct ThroughputRow: Codable, Sendable, Equatable {
    public var backend: String
    public var loop: String
    /// Loop iterations per run.
    public var iterations: UInt64
    /// Instructions per loop iteration.
    public var instructionsPerIteration: Int
    /// Guest instructions executed by the median run: counted by the interpreter; for KVM, which
    /// does not count them, `iterations × instructionsPerIteration`.
    public var instructions: UInt64
    /// Whether `instructions` was counted (true) or computed from the loop (false).
    public var counted: Bool
    /// Wall-clock seconds of the median run.
    public var seconds: Double
    public var instructionsPerSecond: Double
    /// Nanoseconds per guest instruction.
    public var nsPerInstruction: Double
    /// Runs made (the median is reported).
    public var runs: Int
    public var status: String
    public var note: String?
}

/// A figure the issue sets a target for, with the measured value.
public struct BenchTarget: Codable, Sendable, Equatable {
    public var name: String
    public var measured: Double?
    public var unit: String
    /// The target as text ("≤ 1.10", "≥ 100000000").
    public var target: String
    /// Whether the measured value meets it (nil: not measured).
    public var met: Bool?
    public var note: String?
}

/// Everything one `vmm-harness bench` run measured.
public struct BenchResult: Codable, Sendable {
    public var host: HostDescription
    /// ISO 8601 time of the run.
    public var date: String
    public var configuration: BenchSettings
    public var faults: [FaultBenchRow]
    public var throughput: [ThroughputRow]
    public var targets: [BenchTarget]
    /// Whether heap allocations were counted (the interposer is linked and active).
    public var allocationCounting: Bool
}

/// The numbers that shape a run (recorded in the result).
public struct BenchSettings: Codable, Sendable, Equatable {
    public var backends: [BackendKind]
    public var faults: [BenchFaultKind]
    public var depths: [Int]
    public var handlers: [BenchHandlerKind]
    /// Measured round trips per row, per backend.
    public var kvmIterations: Int
    public var interpreterIterations: Int
    /// Unmeasured round trips before each row.
    public var warmupFraction: Double
    /// ALU loop iterations per run, per backend.
    public var kvmALUIterations: Int
    public var interpreterALUIterations: Int
    public var aluRuns: Int
    /// Dispatch-only calls per depth.
    public var dispatchIterations: Int
    public var includeFloor: Bool
    public var includeBaselines: Bool

    /// The standard set (about a minute on the project's 2-core PVM host).
    public static let standard = BenchSettings(
        backends: [.kvm, .interpreter], faults: BenchFaultKind.allCases, depths: [1, 8, 64],
        handlers: BenchHandlerKind.allCases, kvmIterations: 5_000, interpreterIterations: 50_000,
        warmupFraction: 0.1, kvmALUIterations: 20_000, interpreterALUIterations: 2_000_000, aluRuns: 3,
        dispatchIterations: 100_000, includeFloor: true, includeBaselines: true)

    /// A few iterations of everything (tests, smoke runs).
    public static let quick = BenchSettings(
        backends: [.kvm, .interpreter], faults: BenchFaultKind.allCases, depths: [1, 8, 64],
        handlers: BenchHandlerKind.allCases, kvmIterations: 50, interpreterIterations: 200,
        warmupFraction: 0.1, kvmALUIterations: 200, interpreterALUIterations: 2_000, aluRuns: 1,
        dispatchIterations: 200, includeFloor: true, includeBaselines: true)

    public func iterations(for backend: BackendKind) -> Int {
        backend == .kvm ? kvmIterations : interpreterIterations
    }

    /// Measured round trips for a chain row: chains longer than 8 handlers run proportionally
    /// fewer (`iterations × 8 / depth`, at least 1000 or the configured count if smaller), so the
    /// standard set stays within about two minutes while every row keeps enough samples for p99.9.
    public func iterations(for backend: BackendKind, depth: Int) -> Int {
        let n = iterations(for: backend)
        guard depth > 8 else { return n }
        return Swift.min(n, Swift.max(1000, n * 8 / depth))
    }

    public func warmup(for backend: BackendKind) -> Int {
        Swift.max(1, Int(Double(iterations(for: backend)) * warmupFraction))
    }
}
