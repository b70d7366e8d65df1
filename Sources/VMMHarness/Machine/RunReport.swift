/// Why a run ended. Each has its own process exit code (`exitCode`), listed in the README.
public enum ExitReason: String, Sendable, Codable, Equatable {
    /// The guest executed HLT: the normal end.
    case halt
    /// A fault nobody processed (the Windows "fatal exception" path).
    case unhandledFault
    /// Fatal_Error_Handler or another deliberate fatal stop.
    case fatalError
    /// `--timeout` expired.
    case timeout
    /// The same fault with the same registers repeated without progress.
    case faultStorm
    /// Triple fault / KVM_EXIT_SHUTDOWN.
    case shutdown
    /// KVM_EXIT_FAIL_ENTRY.
    case failEntry
    /// KVM could not emulate an instruction and the assist could not finish it either.
    case emulationFailure
    /// The guest touched guest-physical memory that does not exist.
    case mmio
    /// A handler left a frame the CPU cannot resume (bad CS/SS ...), or the guest broke the stub protocol.
    case invalidResume
    /// Anything else the backend reported (unknown exit, internal error).
    case backendError

    /// A fault handler broke a rule in strict mode, or could not be run.
    case handlerError

    /// The process exit code for this ending.
    public var exitCode: Int32 {
        switch self {
        case .halt: return 0
        case .unhandledFault, .fatalError: return 3
        case .timeout: return 4
        case .faultStorm: return 5
        case .shutdown, .failEntry, .emulationFailure, .mmio, .invalidResume, .backendError: return 6
        case .handlerError: return 7
        }
    }
}

/// Registers in a report (JSON numbers; the readable listing shows them in hex).
public struct RegisterSnapshot: Sendable, Codable, Equatable {
    public var eax, ebx, ecx, edx, esi, edi, ebp, esp, eip, eflags: UInt32
    public var cs, ss, ds, es, fs, gs: UInt16
    public var cr0, cr2, cr3, cr4: UInt32

    public init(_ s: CPUState) {
        eax = s.eax; ebx = s.ebx; ecx = s.ecx; edx = s.edx; esi = s.esi; edi = s.edi; ebp = s.ebp; esp = s.esp
        eip = s.eip; eflags = s.eflags
        cs = s.cs.selector; ss = s.ss.selector; ds = s.ds.selector; es = s.es.selector; fs = s.fs.selector; gs = s.gs.selector
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4
    }
}

/// One fault as the report lists it.
public struct FaultRecord: Sendable, Codable, Equatable {
    public var index: Int
    public var vector: UInt8
    public var name: String
    public var errorCode: UInt32
    public var cs: UInt16
    public var eip: UInt32
    public var eflags: UInt32
    /// Ring the fault came from.
    public var ring: UInt8
    /// Guest address of the frame.
    public var frameAddress: UInt32
    /// Symbol + offset of EIP in the user image, when known.
    public var symbol: String?
    /// "resumed", "unhandled" or "stopped".
    public var outcome: String
    /// Who handled it, or why not.
    public var handledBy: String
    /// Where the guest resumed (after the handlers), when it did.
    public var resumeCS: UInt16?
    public var resumeEIP: UInt32?
    /// The whole frame as the handlers left it.
    public var frame: [String: UInt32]?
    public var details: FaultDetails?
}

/// A CHECKPOINT the guest recorded.
public struct Checkpoint: Sendable, Codable, Equatable {
    public var tag: UInt32
    public var value: UInt32
}

/// What `vmm-harness run` reports (the JSON of `--json`; documented in the README).
public struct RunReport: Sendable, Codable {
    public var formatVersion = 1
    public var image: String
    public var backend: BackendReport
    public var faults: [FaultRecord] = []
    /// Faults beyond `maxRecordedFaults` are counted but not listed.
    public var faultCount = 0
    public var checkpoints: [Checkpoint] = []
    public var console = ""
    public var exit: ExitReport
    public var finalRegisters: RegisterSnapshot?
    public var statistics: RunStatistics
    /// The VMM's boot log, diagnostics and debug output (when a VMM handled the faults).
    public var vmm: VMMSummary?
    /// What went wrong outside the run proper, e.g. a guest control procedure that did not return
    /// from a shutdown message.
    public var notes: [String] = []

    public struct ExitReport: Sendable, Codable {
        public var reason: ExitReason
        public var message: String
        public var exitCode: Int32
    }

    public struct RunStatistics: Sendable, Codable {
        public var instructions: UInt64
        public var backendRuns: UInt64
        public var assists: UInt64
        public var wallSeconds: Double
    }
}

/// Which backend ran and why, and what the host is.
public struct BackendReport: Sendable, Codable, Equatable {
    public var kind: BackendKind
    /// Why this backend was chosen (e.g. "auto: /dev/kvm opened" or "auto: /dev/kvm: ENOENT").
    public var reason: String
    public var host: HostDescription
    public init(kind: BackendKind, reason: String, host: HostDescription) {
        self.kind = kind; self.reason = reason; self.host = host
    }
}
