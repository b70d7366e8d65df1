import VMMHarness
import Foundation

/// Formats benchmark results: the readable table, the targets, and merging a peer's JSON.
public enum BenchReport {
    /// One line per finished row, for progress output.
    public static func progressLine(_ r: FaultBenchRow) -> String {
        if let l = r.latency {
            return "\(r.label): p50 \(ns(l.p50Ns)) p99 \(ns(l.p99Ns)) (\(l.count) samples)"
        }
        return "\(r.label): \(r.status)" + (r.note.map { " — \($0)" } ?? "")
    }

    public static func progressLine(_ t: ThroughputRow) -> String {
        t.status == "ok" ? "\(t.backend) ALU loop: \(rate(t.instructionsPerSecond)) instructions/s"
                         : "\(t.backend) ALU loop: \(t.status)" + (t.note.map { " — \($0)" } ?? "")
    }

    /// Nanoseconds as "812 ns", "11.2 µs" or "3.41 ms".
    public static func ns(_ v: UInt64) -> String { ns(Double(v)) }

    public static func ns(_ v: Double) -> String {
        if v < 1_000 { return String(format: "%.0f ns", v) }
        if v < 1_000_000 { return String(format: "%.1f µs", v / 1_000) }
        return String(format: "%.2f ms", v / 1_000_000)
    }

    /// A rate as "123.4 M" / "2.51 M" / "850 k".
    public static func rate(_ v: Double) -> String {
        if v >= 1e9 { return String(format: "%.2f G", v / 1e9) }
        if v >= 1e6 { return String(format: "%.2f M", v / 1e6) }
        if v >= 1e3 { return String(format: "%.1f k", v / 1e3) }
        return String(format: "%.0f", v)
    }

    /// The readable listing: host, fault rows, throughput, targets.
    public static func table(_ r: BenchResult) -> String {
        var out: [String] = []
        out.append("host: \(r.host.cpu); kernel \(r.host.kernel); KVM \(r.host.kvmUsable ? "usable" : "not usable"), flavour \(r.host.kvmFlavour)")
        out.append("date: \(r.date); allocations \(r.allocationCounting ? "counted (malloc interposer)" : "not counted")")
        out.append("")
        out.append("Fault round trips (ns; interval between consecutive fault arrivals on the host)")
        let header = ["backend", "path", "fault", "handler", "depth", "p50", "p90", "p99", "p99.9", "max", "mean", "n", "allocs/fault", "note"]
        var rows: [[String]] = [header]
        for f in r.faults {
            let l = f.latency
            func v(_ x: UInt64?) -> String { x.map { String($0) } ?? "-" }
            rows.append([f.backend, f.path.rawValue, BenchFaultKind(rawValue: f.fault)?.label ?? f.fault,
                         f.handler?.rawValue ?? "-", f.depth > 0 ? String(f.depth) : "-",
                         v(l?.p50Ns), v(l?.p90Ns), v(l?.p99Ns), v(l?.p999Ns), v(l?.maxNs),
                         l.map { String(format: "%.0f", $0.meanNs) } ?? "-", v(l?.count),
                         f.allocationsPerFault.map { String(format: "%.2f", $0) } ?? "-",
                         f.status == "ok" ? (f.note ?? "") : "\(f.status): \(f.note ?? "")"])
        }
        out += columns(rows)
        out.append("")
        out.append("Guest instructions per second, ALU loop (\(BenchGuests.aluInstructionsPerIteration) register/memory ALU instructions per iteration)")
        var t: [[String]] = [["backend", "instructions/s", "ns/instruction", "instructions", "seconds", "runs", "note"]]
        for x in r.throughput {
            t.append([x.backend, x.status == "ok" ? rate(x.instructionsPerSecond) : x.status,
                      x.status == "ok" ? String(format: "%.2f", x.nsPerInstruction) : "-",
                      String(x.instructions), String(format: "%.3f", x.seconds), String(x.runs), x.note ?? ""])
        }
        out += columns(t)
        out.append("")
        out.append("Targets (reported, never asserted)")
        var g: [[String]] = [["figure", "measured", "target", "met", "note"]]
        for x in r.targets {
            g.append([x.name, x.measured.map { formatTarget($0, unit: x.unit) } ?? "-", x.target,
                      x.met.map { $0 ? "yes" : "NO" } ?? "n/a", x.note ?? ""])
        }
        out += columns(g)
        return out.joined(separator: "\n")
    }

    static func formatTarget(_ v: Double, unit: String) -> String {
        switch unit {
        case "ratio": return String(format: "%.2f×", v)
        case "ns": return String(format: "%.1f ns", v)
        case "instructions/s": return rate(v)
        default: return String(format: "%.2f %@", v, unit)
        }
    }

    static func columns(_ rows: [[String]]) -> [String] {
        guard let first = rows.first else { return [] }
        var widths = [Int](repeating: 0, count: first.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in
                i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
    }

    // MARK: targets

    static func find(_ r: BenchResult, _ backend: String, _ path: BenchPath, _ fault: BenchFaultKind = .invalidOpcode,
                     depth: Int = 0) -> FaultBenchRow? {
        r.faults.first {
            $0.backend == backend && $0.path == path && $0.fault == fault.rawValue && $0.depth == depth
                && $0.handler != .guest && $0.latency != nil
        }
    }

    /// Least-squares slope of p50 against depth (ns per extra handler).
    static func slope(_ rows: [FaultBenchRow]) -> Double? {
        let pts = rows.compactMap { r in r.latency.map { (Double(r.depth), Double($0.p50Ns)) } }
        guard pts.count >= 2 else { return nil }
        let mx = pts.map(\.0).reduce(0, +) / Double(pts.count)
        let my = pts.map(\.1).reduce(0, +) / Double(pts.count)
        let sxx = pts.map { ($0.0 - mx) * ($0.0 - mx) }.reduce(0, +)
        guard sxx > 0 else { return nil }
        return pts.map { ($0.0 - mx) * ($0.1 - my) }.reduce(0, +) / sxx
    }

    /// The figures the issue sets targets for.
    public static func targets(_ r: BenchResult) -> [BenchTarget] {
        var out: [BenchTarget] = []
        func t(_ name: String, _ v: Double?, _ unit: String, _ target: String, _ ok: (Double) -> Bool, _ note: String? = nil) {
            out.append(BenchTarget(name: name, measured: v, unit: unit, target: target, met: v.map(ok), note: note))
        }
        let floor = find(r, "c", .cFloor)?.latency?.p50Ns
        let kvm = find(r, "kvm", .vmm, depth: 1)?.latency?.p50Ns
        t("KVM #UD p50 ÷ C floor p50 (VMM, 1 handler)", floor.flatMap { f in kvm.map { Double($0) / Double(f) } },
          "ratio", "≤ 1.10", { $0 <= 1.10 })
        let kvmBackend = find(r, "kvm", .backend)?.latency?.p50Ns
        t("KVM #UD p50 ÷ C floor p50 (Swift backend only)", floor.flatMap { f in kvmBackend.map { Double($0) / Double(f) } },
          "ratio", "≤ 1.10", { $0 <= 1.10 }, "how much of the gap is the backend, not the VMM")
        let kvmMachine = find(r, "kvm", .machine)?.latency?.p50Ns
        t("KVM #UD p50 ÷ C floor p50 (Machine, no VMM)", floor.flatMap { f in kvmMachine.map { Double($0) / Double(f) } },
          "ratio", "≤ 1.10", { $0 <= 1.10 }, "frame read, segment reloads, full register write-back")
        t("interpreter #UD round trip p50 (VMM, 1 handler)", find(r, "interpreter", .vmm, depth: 1)?.latency.map { Double($0.p50Ns) },
          "ns", "≤ 250", { $0 <= 250 })
        t("interpreter #UD round trip p50 (backend only)", find(r, "interpreter", .backend)?.latency.map { Double($0.p50Ns) },
          "ns", "≤ 250", { $0 <= 250 }, "the floor the interpreter path can reach")
        t("interpreter ALU loop", r.throughput.first { $0.backend == "interpreter" && $0.status == "ok" }?.instructionsPerSecond,
          "instructions/s", "≥ 100 M", { $0 >= 100e6 })
        let dispatchRows = r.faults.filter { $0.path == .dispatch && $0.fault == BenchFaultKind.invalidOpcode.rawValue }
        t("extra Swift handler, dispatch only (p50 slope)", slope(dispatchRows), "ns", "≤ 20", { $0 <= 20 })
        let interpRows = r.faults.filter {
            $0.backend == "interpreter" && $0.path == .vmm && $0.fault == BenchFaultKind.invalidOpcode.rawValue && $0.handler == .swift
        }
        t("extra Swift handler, interpreter round trip (p50 slope)", slope(interpRows), "ns", "≤ 20", { $0 <= 20 })
        let d1 = dispatchRows.first { $0.depth == 1 }?.allocationsPerFault
        t("heap allocations per dispatch (1 handler)", d1, "allocations", "0", { $0 == 0 },
          r.allocationCounting ? nil : "not counted: run through the vmm-harness executable")
        let i1 = find(r, "interpreter", .vmm, depth: 1)?.allocationsPerFault
        t("heap allocations per interpreter round trip (VMM, 1 handler)", i1, "allocations", "0", { $0 == 0 },
          r.allocationCounting ? nil : "not counted: run through the vmm-harness executable")
        return out
    }

    // MARK: peers

    /// What `scripts/unicorn-peer.py` prints: a round-trip summary and an ALU throughput figure.
    public struct PeerResult: Codable, Sendable {
        public var peer: String
        public var version: String?
        public var roundTrip: LatencySummary?
        public var roundTripNote: String?
        public var alu: PeerThroughput?
        public var error: String?
    }

    public struct PeerThroughput: Codable, Sendable {
        public var iterations: UInt64
        public var instructionsPerIteration: Int
        public var instructions: UInt64
        public var seconds: Double
        public var instructionsPerSecond: Double
    }

    /// Adds a peer's rows (JSON from `scripts/unicorn-peer.py`) to `result`.
    public static func merge(peerJSON data: Data, into result: inout BenchResult) throws(HarnessError) {
        let peer: PeerResult
        do { peer = try JSONDecoder().decode(PeerResult.self, from: data) } catch {
            throw .invalidArgument("peer JSON: \(error)")
        }
        let name = peer.peer + (peer.version.map { " \($0)" } ?? "")
        if let l = peer.roundTrip {
            result.faults.append(FaultBenchRow(backend: name, path: .peer, fault: BenchFaultKind.invalidOpcode.rawValue,
                                               handler: nil, depth: 0, note: peer.roundTripNote, latency: l))
        } else {
            result.faults.append(FaultBenchRow(backend: name, path: .peer, fault: BenchFaultKind.invalidOpcode.rawValue,
                                               handler: nil, depth: 0, status: "failed", note: peer.error))
        }
        if let a = peer.alu {
            result.throughput.append(ThroughputRow(backend: name, loop: "alu", iterations: a.iterations,
                                                   instructionsPerIteration: a.instructionsPerIteration,
                                                   instructions: a.instructions, counted: false, seconds: a.seconds,
                                                   instructionsPerSecond: a.instructionsPerSecond,
                                                   nsPerInstruction: a.instructions > 0 ? a.seconds * 1e9 / Double(a.instructions) : 0,
                                                   runs: 1, status: "ok", note: "Unicorn (QEMU TCG), Python driver"))
        }
    }
}
