import Foundation

/// What this process holds at one moment, read from `/proc/self`: open file descriptors (all of
/// them, and those that are KVM's: /dev/kvm and the kvm-vm / kvm-vcpu anonymous inodes) and the
/// resident set size.
public struct ProcessResources: Sendable, Codable, Equatable {
    /// Every entry of `/proc/self/fd`.
    public var descriptors: Int
    /// Entries of `/proc/self/fd` that point at /dev/kvm or a KVM VM or vCPU.
    public var kvmDescriptors: Int
    /// VmRSS of `/proc/self/status`, in KiB.
    public var residentKiB: Int

    public init(descriptors: Int, kvmDescriptors: Int, residentKiB: Int) {
        self.descriptors = descriptors
        self.kvmDescriptors = kvmDescriptors
        self.residentKiB = residentKiB
    }

    /// Reads the current values. Entries that vanish while being read (the directory's own
    /// descriptor) are not counted.
    public static func sample() -> ProcessResources {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        var all = 0, kvm = 0
        for name in names {
            guard let target = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)") else { continue }
            all += 1
            if target == "/dev/kvm" || target.hasPrefix("anon_inode:kvm") { kvm += 1 }
        }
        var rss = 0
        if let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) {
            for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
                rss = Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
            }
        }
        return ProcessResources(descriptors: all, kvmDescriptors: kvm, residentKiB: rss)
    }
}

/// Settings of a soak run: how many create-run-destroy cycles, and how much resident memory
/// growth is tolerated before calling it a leak.
public struct SoakSettings: Sendable {
    /// Measured cycles.
    public var cycles = 2_000
    /// Cycles run before the first sample, so caches and lazily built metadata settle.
    public var warmUp = 100
    /// Resident-memory growth (KiB) still counted as noise: allocator caches and lazily created
    /// runtime metadata. A leaked guest memory (about 80 KiB touched per machine) over the default
    /// 2,000 cycles would be about 160 MiB.
    public var residentSlackKiB = 8 * 1024
    public var configuration = RunConfiguration()
    public init() {}
}

/// The outcome of a soak run (`vmm-harness soak`).
public struct SoakReport: Sendable, Codable {
    public var image: String
    /// The backend every cycle ran on.
    public var backend: String
    public var cycles: Int
    public var warmUp: Int
    public var seconds: Double
    /// The exit reason every cycle ended with (they must all agree).
    public var exitReason: ExitReason
    public var before: ProcessResources
    public var after: ProcessResources
    public var residentSlackKiB: Int
    /// Descriptors that were open after the cycles and not before (all kinds).
    public var descriptorGrowth: Int { after.descriptors - before.descriptors }
    /// Resident-memory growth over the measured cycles, in KiB.
    public var residentGrowthKiB: Int { after.residentKiB - before.residentKiB }
    /// What looks leaked; empty when nothing does.
    public var problems: [String] {
        var p: [String] = []
        if descriptorGrowth > 0 {
            p.append("file descriptors grew from \(before.descriptors) to \(after.descriptors) over \(cycles) cycles"
                     + " (KVM: \(before.kvmDescriptors) -> \(after.kvmDescriptors))")
        }
        if residentGrowthKiB > residentSlackKiB {
            p.append("VmRSS grew by \(residentGrowthKiB) KiB over \(cycles) cycles (slack \(residentSlackKiB) KiB)")
        }
        return p
    }

    enum CodingKeys: String, CodingKey {
        case image, backend, cycles, warmUp, seconds, exitReason, before, after, residentSlackKiB
        case descriptorGrowth, residentGrowthKiB, problems
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(image, forKey: .image)
        try c.encode(backend, forKey: .backend)
        try c.encode(cycles, forKey: .cycles)
        try c.encode(warmUp, forKey: .warmUp)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(exitReason, forKey: .exitReason)
        try c.encode(before, forKey: .before)
        try c.encode(after, forKey: .after)
        try c.encode(residentSlackKiB, forKey: .residentSlackKiB)
        try c.encode(descriptorGrowth, forKey: .descriptorGrowth)
        try c.encode(residentGrowthKiB, forKey: .residentGrowthKiB)
        try c.encode(problems, forKey: .problems)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decode(String.self, forKey: .image)
        backend = try c.decode(String.self, forKey: .backend)
        cycles = try c.decode(Int.self, forKey: .cycles)
        warmUp = try c.decode(Int.self, forKey: .warmUp)
        seconds = try c.decode(Double.self, forKey: .seconds)
        exitReason = try c.decode(ExitReason.self, forKey: .exitReason)
        before = try c.decode(ProcessResources.self, forKey: .before)
        after = try c.decode(ProcessResources.self, forKey: .after)
        residentSlackKiB = try c.decode(Int.self, forKey: .residentSlackKiB)
    }

    init(image: String, backend: String, cycles: Int, warmUp: Int, seconds: Double, exitReason: ExitReason,
         before: ProcessResources, after: ProcessResources, residentSlackKiB: Int) {
        self.image = image
        self.backend = backend
        self.cycles = cycles
        self.warmUp = warmUp
        self.seconds = seconds
        self.exitReason = exitReason
        self.before = before
        self.after = after
        self.residentSlackKiB = residentSlackKiB
    }

    /// Readable summary, one line per fact.
    public var listing: String {
        var lines = [
            "\(image) on \(backend): \(warmUp) warm-up + \(cycles) measured cycles in \(String(format: "%.2f", seconds)) s, every one ending in \(exitReason.rawValue)",
            "descriptors: \(before.descriptors) -> \(after.descriptors) (KVM \(before.kvmDescriptors) -> \(after.kvmDescriptors))",
            "VmRSS: \(before.residentKiB) -> \(after.residentKiB) KiB (\(residentGrowthKiB >= 0 ? "+" : "")\(residentGrowthKiB), slack \(residentSlackKiB))",
        ]
        let p = problems
        lines.append(p.isEmpty ? "result: no leak" : "result: LEAK: " + p.joined(separator: "; "))
        return lines.joined(separator: "\n")
    }
}

extension Harness {
    /// Runs `scenario` through the VMM (`Harness.run`) `warmUp + cycles` times, each time on a new
    /// machine that is dropped afterwards, and compares the process's descriptors and resident
    /// memory before and after the measured cycles.
    ///
    /// Meant to run alone in its process (as `vmm-harness soak` does): descriptors and memory are
    /// the process's, so anything else running in it would be counted too. Every cycle must end
    /// the way the first did; a cycle that throws or ends differently ends the soak with an error.
    public static func soak(_ scenario: Scenario, settings: SoakSettings) throws(HarnessError) -> SoakReport {
        guard settings.cycles >= 1, settings.warmUp >= 0 else {
            throw HarnessError.invalidArgument("a soak needs at least one cycle and no negative warm-up")
        }
        var first: (reason: ExitReason, backend: String)?
        func cycle(_ index: Int) throws(HarnessError) {
            let report = try run(scenario, configuration: settings.configuration)
            if let first {
                guard report.exit.reason == first.reason, report.backend.kind.rawValue == first.backend else {
                    throw HarnessError.soak(
                        "cycle \(index + 1) ended with \(report.exit.reason.rawValue) on \(report.backend.kind.rawValue);"
                        + " the first ended with \(first.reason.rawValue) on \(first.backend)")
                }
            } else {
                first = (report.exit.reason, report.backend.kind.rawValue)
            }
        }
        for i in 0..<settings.warmUp { try cycle(i) }
        let before = ProcessResources.sample()
        let start = Date()
        for i in 0..<settings.cycles { try cycle(settings.warmUp + i) }
        let seconds = Date().timeIntervalSince(start)
        let after = ProcessResources.sample()
        return SoakReport(image: scenario.image.name, backend: first?.backend ?? "?", cycles: settings.cycles,
                          warmUp: settings.warmUp, seconds: seconds, exitReason: first?.reason ?? .halt,
                          before: before, after: after, residentSlackKiB: settings.residentSlackKiB)
    }
}
