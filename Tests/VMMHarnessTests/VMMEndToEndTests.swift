import Foundation
import Testing
@testable import VMMHarness

/// The VMM on faults raised by a real guest (KVM where it opens, the interpreter everywhere).
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct VMMEndToEndTests {
    @Test(arguments: BackendKind.allCases)
    func deHandlerSetsEAXAndSkipsTheDivide(backend: BackendKind) throws {
        let s = try TestSupport.scenario("de")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let fault = try #require(s.image.symbols["fault"])
        let report = try TestSupport.runThroughVMM(s, on: backend) { vmm throws(HarnessError) in
            do {
                _ = try vmm.hookVMMFault(0x00, name: "DEFIX") { _, frame, _ in
                    frame.eax = 0xDEAD_BEEF
                    frame.eip &+= 2          // DIV ECX is F7 F1
                    return .processed
                }
            } catch { throw .invalidArgument("\(error)") }
        }
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        #expect(report.finalRegisters?.eax == 0xDEAD_BEEF)
        #expect(report.finalRegisters?.eip == fault + 3, "resumed after the DIV, then HLT")
        let visits = try #require(report.faults.first?.details?.dispatch?.visits)
        // Hooked before boot, so it sits below the VMM's own handler, which passes the fault on.
        #expect(visits.map(\.name) == ["VMM", "DEFIX"])
        #expect(visits.map(\.tier) == [.vmm, .criticalInit])
    }

    @Test(arguments: BackendKind.allCases)
    func threeTiersRunInTheDDKsOrder(backend: BackendKind) throws {
        let s = try TestSupport.scenario("tiers")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let visits = try #require(report.faults.first?.details?.dispatch?.visits)
        #expect(visits.map(\.tier) == [.postCriticalInit, .vmm, .criticalInit])
        #expect(visits.map(\.disposition) == [.passedOn, .passedOn, .processed])
        #expect(visits.first?.name.hasPrefix("LATEOBS") == true && visits.last?.name.hasPrefix("CRITFIX") == true)
        #expect(report.finalRegisters?.eax == SampleDevices.fixMarker(vector: 0))
        #expect(report.vmm?.boot.isEmpty == false)
    }

    @Test(arguments: BackendKind.allCases)
    func unhandledGPEndsWithTheFatalExceptionReport(backend: BackendKind) throws {
        let s = try TestSupport.scenario("gp")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let fault = try #require(s.image.symbols["fault"])
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .unhandledFault)
        #expect(report.exit.exitCode == 3)
        #expect(report.exit.message.hasPrefix("A fatal exception 0D has occurred at 0028:\(hex(fault, prefix: ""))"))
        let f = try #require(report.faults.first)
        #expect(f.frame?["Client_Error"] == 0x1234 && f.frame?["Client_EIP"] == fault)
    }

    @Test(arguments: BackendKind.allCases)
    func handlerThatChangesEBPIsReportedAndStrictModeStops(backend: BackendKind) throws {
        let s = try TestSupport.scenario("de")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let hook: (VirtualMachineManager) throws(HarnessError) -> Void = { vmm throws(HarnessError) in
            do {
                _ = try vmm.hookVMMFault(0x00, name: "BADEBP") { regs, frame, _ in
                    regs.ebp = 0
                    frame.eip &+= 2
                    return .processed
                }
            } catch { throw .invalidArgument("\(error)") }
        }
        let lenient = try TestSupport.runThroughVMM(s, on: backend, prepare: hook)
        #expect(lenient.exit.reason == .halt)
        #expect(lenient.vmm?.diagnostics.contains { $0.contains("BADEBP") && $0.contains("EBP") } == true)
        let strict = try TestSupport.runThroughVMM(s, on: backend, strict: true, prepare: hook)
        #expect(strict.exit.reason == .handlerError)
        #expect(strict.exit.exitCode == 7)
    }
}
