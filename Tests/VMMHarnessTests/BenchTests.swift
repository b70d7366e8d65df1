import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import VMMHarness
@testable import VMMHarnessBench

/// The benchmark's machinery: percentiles, the chart, the guest loops, a tiny run. Never asserts on
/// how long anything took (benchmarks are not tests).
struct BenchTests {
    // MARK: percentiles

    @Test func percentilesOfOneToThousandAreExact() throws {
        // With three significant digits, values below 2048 are recorded exactly.
        let l = try #require(LatencySummary(samples: (1...1000).map(UInt64.init)))
        #expect(l.count == 1000)
        #expect(l.minNs == 1)
        #expect(l.p50Ns == 500)
        #expect(l.p90Ns == 900)
        #expect(l.p99Ns == 990)
        #expect(l.p999Ns == 999)
        #expect(l.maxNs == 1000)
        #expect(abs(l.meanNs - 500.5) < 0.01)
    }

    @Test func largeValuesKeepThreeSignificantDigits() throws {
        // 99 samples of 10 µs and one of 5 ms: p50/p99 at 10 µs, p99.9 and max at 5 ms (±0.1 %).
        let samples = [UInt64](repeating: 10_000, count: 99) + [5_000_000]
        let l = try #require(LatencySummary(samples: samples))
        #expect(abs(Double(l.p50Ns) - 10_000) <= 10)
        #expect(abs(Double(l.p99Ns) - 10_000) <= 10)
        #expect(abs(Double(l.p999Ns) - 5_000_000) <= 5_000)
        #expect(abs(Double(l.maxNs) - 5_000_000) <= 5_000)
    }

    @Test func noSamplesGiveNoSummary() {
        #expect(LatencySummary(samples: [UInt64]()) == nil)
    }

    @Test func slopeOfAChainIsNanosecondsPerHandler() throws {
        let rows = [1, 8, 64].map { d in
            FaultBenchRow(backend: "none", path: .dispatch, fault: "ud", handler: .swift, depth: d,
                          latency: LatencySummary(count: 1, minNs: 0, p50Ns: UInt64(100 + 15 * d), p90Ns: 0, p99Ns: 0,
                                                  p999Ns: 0, maxNs: 0, meanNs: 0))
        }
        let s = try #require(BenchReport.slope(rows))
        #expect(abs(s - 15) < 1e-9)
    }

    // MARK: chart

    static func syntheticResult() -> BenchResult {
        func lat(_ p50: UInt64) -> LatencySummary {
            LatencySummary(count: 100, minNs: p50 / 2, p50Ns: p50, p90Ns: p50 * 11 / 10, p99Ns: p50 * 2, p999Ns: p50 * 3,
                           maxNs: p50 * 10, meanNs: Double(p50))
        }
        var faults: [FaultBenchRow] = [
            FaultBenchRow(backend: "c", path: .cFloor, fault: "ud", handler: nil, depth: 0, latency: lat(11_000)),
            FaultBenchRow(backend: "peer <&> \"x\"", path: .peer, fault: "ud", handler: nil, depth: 0, latency: lat(4_000)),
        ]
        for b in ["kvm", "interpreter"] {
            for d in [1, 8, 64] {
                faults.append(FaultBenchRow(backend: b, path: .vmm, fault: "ud", handler: .swift, depth: d,
                                            latency: lat(UInt64((b == "kvm" ? 12_000 : 300) + 20 * d))))
                faults.append(FaultBenchRow(backend: b, path: .vmm, fault: "ud", handler: .guest, depth: d,
                                            status: "not available", note: "not implemented"))
            }
        }
        let host = HostDescription(kvmFlavour: "pvm", kvmDevice: "/dev/kvm", kvmUsable: true, kvmError: nil,
                                   cpu: "Test CPU <1>", kernel: "6.0 & more")
        var r = BenchResult(host: host, date: "2026-01-01T00:00:00Z", configuration: .quick, faults: faults,
                            throughput: [], targets: [], allocationCounting: false)
        r.targets = BenchReport.targets(r)
        return r
    }

    /// Collects `data-series` attributes while checking the document parses.
    final class SeriesCollector: NSObject, XMLParserDelegate {
        var series: [String] = []
        var root: String?
        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                    qualifiedName qName: String?, attributes attributeDict: [String: String] = [:]) {
            if root == nil { root = elementName }
            if let s = attributeDict["data-series"] { series.append(s) }
        }
    }

    @Test func chartIsWellFormedXMLWithEverySeries() throws {
        let r = Self.syntheticResult()
        let svg = BenchChart.svg(r)
        let parser = XMLParser(data: Data(svg.utf8))
        let collector = SeriesCollector()
        parser.delegate = collector
        #expect(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")")
        #expect(collector.root == "svg")
        // Percentile panel: every measured row with depth ≤ 1.
        for row in r.faults where row.latency != nil && row.depth <= 1 {
            #expect(collector.series.contains(row.label), "missing \(row.label)")
        }
        // Depth panel: one series per backend's chain.
        #expect(collector.series.contains("kvm vmm #UD (UD2)"))
        #expect(collector.series.contains("interpreter vmm #UD (UD2)"))
        #expect(collector.series.contains { $0.hasPrefix("peer <&> \"x\"") }, "escaped text survives the round trip")
    }

    @Test func escapingCoversMarkup() {
        #expect(BenchChart.escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&apos;")
    }

    // MARK: guests

    /// Each fault loop raises its fault on the expected vector once per iteration, with an error
    /// code where the CPU pushes one, and halts when the handler advances EIP as the bench does.
    @Test(arguments: BenchFaultKind.allCases)
    func faultLoopRaisesItsFaultOnTheInterpreter(kind: BenchFaultKind) throws {
        let image = BenchGuests.faultLoop(kind, count: 3)
        var options = MachineOptions()
        options.timeout = 10
        let handling = ClosureFaultHandling { event, frame in
            frame.eip &+= kind.resumeAdvance
            return event.vector == kind.vector
        }
        let m = try Harness.makeMachine(image: image, choice: .interpreter, options: options, faultHandling: handling)
        let report = m.run()
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        #expect(report.faultCount == 3)
        #expect(report.faults.allSatisfy { $0.vector == kind.vector })
        if kind == .generalProtection {
            #expect(report.faults.first?.errorCode == UInt32(BenchFaultKind.badSelector))
        }
    }

    @Test func aluLoopRunsItsInstructionCount() throws {
        let m = try Harness.makeMachine(image: BenchGuests.aluLoop(iterations: 100), choice: .interpreter)
        let report = m.run()
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        // mov ecx + 100 iterations + hlt.
        #expect(report.statistics.instructions == UInt64(2 + 100 * BenchGuests.aluInstructionsPerIteration))
    }

    // MARK: a tiny run

    @Test func tinyInterpreterRunHasEveryRequestedRow() throws {
        var s = BenchSettings.quick
        s.backends = [.interpreter]
        s.interpreterIterations = 20
        s.interpreterALUIterations = 500
        s.dispatchIterations = 30
        let result = BenchRunner(settings: s).run()
        for kind in s.faults {
            for depth in s.depths {
                let swift = result.faults.filter {
                    $0.backend == "interpreter" && $0.path == .vmm && $0.fault == kind.rawValue && $0.depth == depth && $0.handler == .swift
                }
                #expect(swift.count == 1, "\(kind) depth \(depth)")
                if let row = swift.first {
                    #expect(row.status == "ok", "\(row.note ?? "")")
                    #expect(row.latency?.count == 20)
                    #expect((row.latency?.p50Ns ?? 0) > 0)
                }
                let guest = result.faults.filter {
                    $0.backend == "interpreter" && $0.fault == kind.rawValue && $0.depth == depth && $0.handler == .guest
                }
                // Guest FaultProc chains run like Swift ones; VMMcall is served by the service table.
                #expect(guest.map(\.status) == [kind == .vmmCall ? "not available" : "ok"], "\(guest.map { $0.note ?? "" })")
            }
        }
        for path in [BenchPath.backend, .machine, .clock] {
            #expect(result.faults.contains { $0.path == path && $0.status == "ok" && ($0.latency?.count ?? 0) > 0 }, "\(path)")
        }
        #expect(result.faults.filter { $0.path == .dispatch && $0.status == "ok" }.map(\.depth) == s.depths)
        #expect(!result.faults.contains { $0.backend == "kvm" }, "only the requested backend")
        let alu = try #require(result.throughput.first { $0.backend == "interpreter" })
        #expect(alu.status == "ok")
        #expect(alu.instructions > 0 && alu.instructionsPerSecond > 0)
        #expect(!result.targets.isEmpty)
        #expect(result.allocationCounting == false, "the test binary has no malloc interposer")
        // Table and JSON render.
        #expect(BenchReport.table(result).contains("Targets"))
        let data = try JSONEncoder().encode(result)
        let back = try JSONDecoder().decode(BenchResult.self, from: data)
        #expect(back.faults.count == result.faults.count)
    }

    @Test(.enabled(if: TestSupport.kvmUsable, "needs /dev/kvm: the C floor creates its own VM"))
    func cFloorProducesSamples() throws {
        var s = BenchSettings.quick
        s.kvmIterations = 20
        let row = BenchRunner(settings: s).cFloorRow()
        #expect(row.status == "ok", "\(row.note ?? "")")
        #expect(row.latency?.count == 20)
        #expect((row.latency?.p50Ns ?? 0) > 0)
    }

    @Test func peerJSONMergesAsRows() throws {
        let json = """
        {"peer": "unicorn", "version": "2.1.4",
         "roundTrip": {"count": 10, "minNs": 1, "p50Ns": 2, "p90Ns": 3, "p99Ns": 4, "p999Ns": 5, "maxNs": 6, "meanNs": 2.5},
         "alu": {"iterations": 10, "instructionsPerIteration": 10, "instructions": 100, "seconds": 0.001, "instructionsPerSecond": 100000}}
        """
        var r = Self.syntheticResult()
        let before = r.faults.count
        try BenchReport.merge(peerJSON: Data(json.utf8), into: &r)
        #expect(r.faults.count == before + 1)
        #expect(r.faults.last?.backend == "unicorn 2.1.4")
        #expect(r.faults.last?.latency?.p50Ns == 2)
        #expect(r.throughput.last?.instructions == 100)
        #expect(throws: HarnessError.self) { try BenchReport.merge(peerJSON: Data("{".utf8), into: &r) }
    }
}
