import Foundation
import Testing
@testable import VMMHarness

/// Every scenario in guest/scenarios, run on each backend this host has, checked against the
/// expectations written in the scenario itself (vector, error code, faulting EIP).
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct ScenarioTests {
    static let backends: [BackendKind] = BackendKind.allCases

    @Test(arguments: TestSupport.scenarioNames(), backends)
    func scenarioFaultsAsItSays(name: String, backend: BackendKind) throws {
        let s = try TestSupport.scenario(name)
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(!s.faults.isEmpty, "\(name) states no expected fault")
        let problems = s.check(report)
        #expect(problems.isEmpty, "\(name) on \(backend): \(problems.joined(separator: "; "))")
        #expect(report.exit.reason == s.exit ?? .unhandledFault, "\(name): \(report.exit.message)")
    }

    @Test(arguments: backends)
    func hostChangesToEAXAndEIPAreWhatTheGuestContinuesWith(backend: BackendKind) throws {
        let s = try TestSupport.scenario("host-resume")
        try TestSupport.requireBackend(backend, needs: [])
        let resume = try #require(s.image.symbols["resume"])
        let handling = ClosureFaultHandling { event, frame in
            guard event.vector == 0x06 else { return false }
            frame.eax = 0x1234
            frame.eip = resume
            return true
        }
        let report = try TestSupport.run(s.image, on: backend, handling: handling)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let regs = try #require(report.finalRegisters)
        #expect(regs.eax == 0x1234)
        #expect(regs.ebx == 0xC0FFEE)
        #expect(regs.eip == resume + 1, "HLT at `resume` leaves EIP after it")
        #expect(report.faults.count == 1 && report.faults[0].resumeEIP == resume)
    }

    @Test(arguments: backends)
    func softwareInterruptsResumeAfterTheINT(backend: BackendKind) throws {
        let s = try TestSupport.scenario("intn")
        try TestSupport.requireBackend(backend, needs: [])
        let report = try TestSupport.run(s.image, on: backend, handling: ClosureFaultHandling { _, _ in true })
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        #expect(report.faults.map(\.vector) == Array(0x30...0x4F))
        #expect(report.finalRegisters?.eax == 0x4F)
        // INT n is a trap: each frame's EIP is the next INT (2 bytes later).
        for (a, b) in zip(report.faults, report.faults.dropFirst()) { #expect(b.eip == a.eip + 2) }
    }

    @Test(arguments: backends)
    func aFaultThatIsNeverFixedIsAStormNotAHang(backend: BackendKind) throws {
        let s = try TestSupport.scenario("ud")
        try TestSupport.requireBackend(backend, needs: [])
        // Resuming a fault without changing anything re-executes the UD2 forever.
        let report = try TestSupport.run(s.image, on: backend, handling: ClosureFaultHandling { _, _ in true })
        #expect(report.exit.reason == .faultStorm)
        #expect(report.faultCount == MachineOptions().faultStormLimit + 1)
    }
}

extension TestSupport {
    /// Runs a scenario the way `vmm-harness run` does (VMM, its devices), on one backend.
    static func runThroughVMM(_ s: Scenario, on backend: BackendKind, strict: Bool = false,
                              prepare: (VirtualMachineManager) throws(HarnessError) -> Void = { _ throws(HarnessError) in })
        throws -> RunReport
    {
        var c = RunConfiguration()
        c.backend = backend == .kvm ? .kvm : .interpreter
        c.strictRegisterRules = strict
        c.options.backend = backendOptions
        return try Harness.run(s, configuration: c, prepare: prepare)
    }

    /// Cancels (skips) the current test case, saying why, when `backend` cannot run here.
    static func requireBackend(_ backend: BackendKind, needs: GuestNeeds) throws {
        switch backend {
        case .kvm:
            guard kvmUsable else { try Test.cancel("KVM: \(kvmSkipReason)") }
            let missing = Harness.unsupportedNeeds(needs, host: TestSupport.host)
            guard missing.isEmpty else {
                try Test.cancel("this host's KVM cannot run \(missing.names.joined(separator: ", ")) (see vmm-harness probe)")
            }
        case .interpreter:
            break   // the interpreter runs everywhere
        }
    }
}
