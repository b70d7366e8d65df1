import Foundation
import Testing
@testable import VMMHarness

/// What a handler changes outside the frame stays changed, as under the real VMM: a Swift #NM
/// handler that clears CR0.TS through the VMM is called once and the FPU instruction then runs.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct HandlerSideEffectTests {
    @Test(arguments: BackendKind.allCases)
    func aSwiftNMHandlerThatClearsTSIsCalledOnce(backend: BackendKind) throws {
        let s = try TestSupport.scenario("nm")   // sets CR0.TS, FNINIT, HLT
        try TestSupport.requireBackend(backend, needs: s.needs)
        var calls = 0
        var tsSeen: [Bool] = []
        let report = try TestSupport.runThroughVMM(s, on: backend) { vmm throws(HarnessError) in
            do {
                try vmm.hookVMMFault(0x07, name: "LAZYFPU") { _, _, ctx in
                    calls += 1
                    var sys = try ctx.vmm.readSystemRegisters()
                    tsSeen.append(sys.cr0 & CR0.ts != 0)
                    sys.cr0 &= ~CR0.ts
                    try ctx.vmm.writeSystemRegisters(sys)
                    return .processed
                }
            } catch { throw .invalidArgument("\(error)") }
        }
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        #expect(calls == 1)
        #expect(tsSeen == [true])
        #expect(report.faultCount == 1)
        #expect((report.finalRegisters?.cr0 ?? CR0.ts) & CR0.ts == 0)
    }

    @Test func withoutAMachineTheSystemRegistersAreUnsupported() {
        let vmm = VirtualMachineManager()
        #expect(throws: HarnessError.self) { try vmm.readSystemRegisters() }
    }
}
