import Foundation
import Testing
@testable import VMMHarness

/// The machine's two fault paths agree: a fault it lists in the report (a record, the VMM's full
/// dispatch trace) and a fault it only counts (no record, no trace: the benchmark's path) leave
/// the guest in the same state, with the same diagnostics, for every scenario.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct TracedUntracedTests {
    struct Outcome: Equatable {
        var exit: ExitReason
        var message: String
        var registers: RegisterSnapshot?
        var faultCount: Int
        var console: String
        var checkpoints: [Checkpoint]
        var diagnostics: [String]
        var debugLog: String
    }

    static func outcome(_ name: String, on backend: BackendKind, listed: Bool) throws -> Outcome {
        let s = try TestSupport.scenario(name)
        var c = RunConfiguration()
        c.backend = backend == .kvm ? .kvm : .interpreter
        c.options.backend = TestSupport.backendOptions
        c.options.maxRecordedFaults = listed ? 1000 : 0
        let r = try Harness.run(s, configuration: c)
        if listed { #expect(r.faults.count == min(r.faultCount, 1000)) } else { #expect(r.faults.isEmpty) }
        return Outcome(exit: r.exit.reason, message: r.exit.message, registers: r.finalRegisters, faultCount: r.faultCount,
                       console: r.console, checkpoints: r.checkpoints, diagnostics: r.vmm?.diagnostics ?? [],
                       debugLog: r.vmm?.debugLog ?? "")
    }

    @Test(arguments: TestSupport.scenarioNames(), BackendKind.allCases)
    func listedAndUnlistedFaultsEndTheSame(name: String, backend: BackendKind) throws {
        let s = try TestSupport.scenario(name)
        try TestSupport.requireBackend(backend, needs: s.needs)
        let listed = try Self.outcome(name, on: backend, listed: true)
        let unlisted = try Self.outcome(name, on: backend, listed: false)
        #expect(listed == unlisted, "\(name) on \(backend)")
        #expect(listed.faultCount > 0)
    }
}
