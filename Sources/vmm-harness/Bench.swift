import ArgumentParser
import CMallocCounter
import Foundation
import VMMHarness
import VMMHarnessBench

extension BackendKind: ExpressibleByArgument {}
extension BenchFaultKind: ExpressibleByArgument {}
extension BenchHandlerKind: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure fault round trips (per backend, fault kind and handler-chain depth) and guest instructions per second.",
        discussion: """
        Times the interval between consecutive fault arrivals on the host (CLOCK_MONOTONIC) while a guest \
        loop raises one fault per iteration, and reports p50/p90/p99/p99.9/max from an HdrHistogram. \
        Baselines in the same run: a C KVM fault loop (the floor), the backends without the VMM, the \
        VMM dispatch alone, and optionally a peer (--peer, JSON from scripts/unicorn-peer.py). \
        See docs/benchmarks.md.
        """)

    @Flag(help: "A few iterations of everything (a smoke run; the numbers mean little).")
    var quick = false

    @Option(name: .customLong("backend"), help: "Backends to measure (repeatable): kvm, interpreter. Default: both.")
    var backends: [BackendKind] = []

    @Option(name: .customLong("fault"), help: "Fault kinds (repeatable): \(BenchFaultKind.allCases.map(\.rawValue).joined(separator: ", ")). Default: all.")
    var faults: [BenchFaultKind] = []

    @Option(name: .customLong("handler"), help: "Handler kinds (repeatable): \(BenchHandlerKind.allCases.map(\.rawValue).joined(separator: ", ")). Default: both.")
    var handlers: [BenchHandlerKind] = []

    @Option(name: .customLong("depth"), help: "Handler-chain depths (repeatable). Default: 1, 8, 64.")
    var depths: [Int] = []

    @Option(help: "Measured round trips per KVM row.")
    var kvmIterations: Int?

    @Option(help: "Measured round trips per interpreter row.")
    var interpreterIterations: Int?

    @Flag(help: "Skip the baselines (clock, C floor, backend-only, machine-only, dispatch-only).")
    var noBaselines = false

    @Option(help: "Merge a peer's results (JSON written by scripts/unicorn-peer.py).")
    var peer: String?

    @Flag(help: "Print the JSON result instead of the table.")
    var json = false

    @Option(help: "Also write the JSON result to this file.")
    var jsonOutput: String?

    @Option(help: "Write the SVG chart to this file.")
    var svg: String?

    @Flag(help: "Print progress lines on stderr.")
    var progress = false

    func validate() throws {
        if depths.contains(where: { $0 < 1 || $0 > 1000 }) { throw ValidationError("--depth must be between 1 and 1000") }
        for n in [kvmIterations, interpreterIterations].compactMap({ $0 }) where n < 2 || n > 50_000_000 {
            throw ValidationError("iteration counts must be between 2 and 50000000")
        }
    }

    func run() throws {
        var settings = quick ? BenchSettings.quick : BenchSettings.standard
        if !backends.isEmpty { settings.backends = backends }
        if !faults.isEmpty { settings.faults = faults }
        if !depths.isEmpty { settings.depths = depths }
        if !handlers.isEmpty { settings.handlers = handlers }
        if let kvmIterations { settings.kvmIterations = kvmIterations }
        if let interpreterIterations { settings.interpreterIterations = interpreterIterations }
        if noBaselines { settings.includeBaselines = false; settings.includeFloor = false }
        var counter: (@Sendable () -> UInt64)?
        if cmalloc_active() != 0 { counter = { @Sendable in cmalloc_allocations() } }
        let printProgress = progress
        let runner = BenchRunner(settings: settings, allocationCounter: counter, progress: { line in
            if printProgress { FileHandle.standardError.write(Data("bench: \(line)\n".utf8)) }
        }, kvmDevice: RunOptions.environmentBackendOptions.kvmDevicePath)
        var result = runner.run()
        if let peer {
            guard let data = FileManager.default.contents(atPath: peer) else { fail("cannot read --peer \(peer)") }
            do { try BenchReport.merge(peerJSON: data, into: &result) } catch { fail(error.description) }
            result.targets = BenchReport.targets(result)
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do { data = try enc.encode(result) } catch { fail("encoding the result: \(error)") }
        if let jsonOutput {
            guard FileManager.default.createFile(atPath: jsonOutput, contents: data) else { fail("cannot write \(jsonOutput)") }
        }
        if let svg {
            guard FileManager.default.createFile(atPath: svg, contents: Data(BenchChart.svg(result).utf8)) else {
                fail("cannot write \(svg)")
            }
        }
        print(json ? String(decoding: data, as: UTF8.self) : BenchReport.table(result))
    }
}
