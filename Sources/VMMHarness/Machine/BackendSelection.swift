import Foundation

/// Which backend the user asked for (`--backend`, or the environment variable `VMM_HARNESS_BACKEND`).
public enum BackendChoice: String, Sendable, CaseIterable, Codable {
    /// KVM when the device really opens and the host can run what the image needs, else the interpreter.
    case auto
    case kvm
    case interpreter

    /// The choice from `VMM_HARNESS_BACKEND`, if set to a valid value.
    public static var fromEnvironment: BackendChoice? {
        ProcessInfo.processInfo.environment["VMM_HARNESS_BACKEND"].flatMap { BackendChoice(rawValue: $0.lowercased()) }
    }
}

/// Features an image needs from the host, declared by scenarios (`@needs`) or by the caller.
public struct GuestNeeds: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// 32-bit paging (CR0.PG without PAE).
    public static let paging = GuestNeeds(rawValue: 1 << 0)
    /// Virtual-8086 mode.
    public static let v86 = GuestNeeds(rawValue: 1 << 1)
    /// Alignment checking (#AC with CR0.AM, EFLAGS.AC, CPL 3).
    public static let alignmentCheck = GuestNeeds(rawValue: 1 << 2)

    /// Each need with its `@needs` word and the probe feature that tests it.
    public static let all: [(need: GuestNeeds, word: String, probe: String)] = [
        (.paging, "paging", KVMProbe.pagingFeature),
        (.v86, "v86", KVMProbe.v86Feature),
        (.alignmentCheck, "alignment-check", KVMProbe.alignmentFeature),
    ]

    public var names: [String] { GuestNeeds.all.filter { contains($0.need) }.map(\.word) }

    /// Parses an `@needs` word.
    public init?(word: String) {
        guard let e = GuestNeeds.all.first(where: { $0.word == word }) else { return nil }
        self = e.need
    }
}

/// Builds the interpreter backend; set by the interpreter module at start-up (see `Harness`).
public typealias InterpreterFactory = @Sendable (GuestMemory, CPUState) -> any ExecutionBackend

/// Creates machines on the backend the user chose, with the reason for the choice.
public enum Harness {
    /// Makes a machine for `image`. `auto` prefers KVM; it falls back to the interpreter when the
    /// KVM device does not open or the host's KVM cannot run what `needs` lists (this project's
    /// PVM hosts cannot run paging or V86), and says why in `backendReport.reason`.
    public static func makeMachine(image: GuestImage, choice requested: BackendChoice = .auto, needs: GuestNeeds = [],
                                   options: MachineOptions = MachineOptions(),
                                   faultHandling: (any FaultHandling)? = nil) throws(HarnessError) -> Machine {
        let choice = requested == .auto ? (BackendChoice.fromEnvironment ?? .auto) : requested
        let backendOptions = BackendOptions(environment: ProcessInfo.processInfo.environment)
        let host = HostDescription.current(devicePath: backendOptions.kvmDevicePath)
        let memory = try GuestMemory(size: options.memorySize)
        let initial = Machine.initialState(entry: image.entry, layout: try RuntimeImage.layout())
        var backend: any ExecutionBackend
        var reason: String
        switch choice {
        case .interpreter:
            backend = try makeInterpreter(memory, initial)
            reason = requested == .auto ? "VMM_HARNESS_BACKEND=interpreter" : "--backend interpreter"
        case .kvm:
            let missing = unsupportedNeeds(needs, host: host)
            guard missing.isEmpty else {
                throw .unsupported("this host's KVM (\(host.kvmFlavour)) cannot run \(missing.names.joined(separator: ", ")); use --backend interpreter")
            }
            do {
                backend = try KVMBackend(memory: memory, options: backendOptions, assist: makeAssist())
            } catch {
                throw .unsupported("KVM backend: \(KVMDiagnosis.explain(error))")
            }
            reason = requested == .auto ? "VMM_HARNESS_BACKEND=kvm" : "--backend kvm"
        case .auto:
            let missing = unsupportedNeeds(needs, host: host)
            if !missing.isEmpty {
                backend = try makeInterpreter(memory, initial)
                reason = "auto: the image needs \(missing.names.joined(separator: ", ")), which this host's KVM (\(host.kvmFlavour)) cannot run (probed)"
            } else {
                do {
                    backend = try KVMBackend(memory: memory, options: backendOptions, assist: makeAssist())
                    reason = "auto: \(host.kvmDevice) opened (KVM flavour \(host.kvmFlavour))"
                } catch {
                    backend = try makeInterpreter(memory, initial)
                    reason = "auto: \(KVMDiagnosis.explain(error)); using the interpreter"
                }
            }
        }
        let machine = try Machine(image: image, memory: memory, backend: backend,
                                  backendReport: BackendReport(kind: backend.kind, reason: reason, host: host),
                                  options: options)
        machine.faultHandling = faultHandling
        if backend.kind == .kvm { machine.assist = makeAssist() }
        return machine
    }

    /// Needs this host's KVM cannot meet, found by running the probe guest for each (once per
    /// process): nothing is assumed from the host's flavour.
    public static func unsupportedNeeds(_ needs: GuestNeeds, host: HostDescription) -> GuestNeeds {
        var missing: GuestNeeds = []
        for e in GuestNeeds.all where needs.contains(e.need) {
            if KVMProbe.cachedSupport(e.probe, devicePath: host.kvmDevice) != true { missing.insert(e.need) }
        }
        return missing
    }

    static func makeInterpreter(_ memory: GuestMemory, _ state: CPUState) throws(HarnessError) -> any ExecutionBackend {
        guard let f = interpreterFactory else { throw .unsupported("the interpreter backend is not built in") }
        return f(memory, state)
    }

    static func makeAssist() -> (any InstructionAssist)? { assistFactory?() }
}
