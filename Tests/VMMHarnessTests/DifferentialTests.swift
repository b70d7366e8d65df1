import Foundation
import Testing
@testable import VMMHarness
@testable import VMMHarnessDifferential

/// The same scenario on KVM and on the interpreter gives the same faults (vector, error code,
/// CS:EIP, EFLAGS, the whole frame), the same dispatch traces and the same final registers.
@Suite(.enabled(if: TestSupport.toolchain != nil && TestSupport.kvmUsable,
                "needs a /dev/kvm that opens and the toolchain's clang to compare the two backends"))
struct DifferentialScenarioTests {
    @Test(arguments: TestSupport.scenarioNames())
    func bothBackendsAgree(name: String) throws {
        let s = try TestSupport.scenario(name)
        guard Harness.unsupportedNeeds(s.needs, host: TestSupport.host).isEmpty else {
            try Test.cancel("this host's KVM cannot run \(s.needs.names.joined(separator: ", "))")
        }
        let k = try TestSupport.runThroughVMM(s, on: .kvm)
        let i = try TestSupport.runThroughVMM(s, on: .interpreter)
        #expect(k.exit.reason == i.exit.reason)
        #expect(k.exit.message == i.exit.message)
        #expect(k.faultCount == i.faultCount)
        for (a, b) in zip(k.faults, i.faults) {
            #expect(a.vector == b.vector && a.errorCode == b.errorCode && a.cs == b.cs && a.eip == b.eip,
                    "fault #\(a.index): kvm \(a.name) \(hex(a.eip)) vs interpreter \(b.name) \(hex(b.eip))")
            #expect(a.eflags == b.eflags, "fault #\(a.index) EFLAGS kvm \(hex(a.eflags)) vs interpreter \(hex(b.eflags))")
            #expect(a.frame == b.frame, "fault #\(a.index) frame")
            #expect(a.details?.trace == b.details?.trace, "fault #\(a.index) dispatch trace")
            #expect(a.outcome == b.outcome && a.resumeEIP == b.resumeEIP)
        }
        #expect(k.finalRegisters == i.finalRegisters)
        #expect(k.checkpoints == i.checkpoints)
    }
}
