import Foundation
import Testing
@testable import VMMHarness

/// Guest-side virtual devices: VMMcall from guest code, guest FaultProcs in the same chains as
/// Swift handlers, the DDK example as written. On KVM (where it opens) and on the interpreter.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct GuestDeviceTests {
    @Test(arguments: BackendKind.allCases)
    func ddkExampleHooksAndItsHandlerProcessesTheFault(backend: BackendKind) throws {
        let s = try TestSupport.scenario("ddk-example")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let hook = try #require(report.faults.first)
        #expect(hook.vector == 0x20 && hook.handledBy == "VMMcall Hook_VMM_Fault")
        let line = try #require(hook.details?.trace.first)
        #expect(line.contains("Hook_VMM_Fault") && line.contains("EAX=0000000D") && line.contains("CF clear, ESI=00000000"),
                "the guest got CF clear and ESI = 0 (no previous handler): \(line)")
        let gp = try #require(report.faults.last)
        let faultProc = try #require(s.image.symbols["FaultProc"])
        let visits = try #require(gp.details?.dispatch?.visits)
        #expect(visits.map(\.name) == ["VMM", "FaultProc"])
        #expect(visits.last?.address.rawValue == faultProc && visits.last?.kind == "guest")
        #expect(visits.last?.tier == .criticalInit && visits.last?.disposition == .processed)
        #expect(report.finalRegisters?.eax == 0x600D)
        #expect(report.vmm?.boot.contains { $0.contains("DDKDEMO") } == true)
    }

    @Test(arguments: BackendKind.allCases)
    func guestSwiftGuestChainInTheThreeTiers(backend: BackendKind) throws {
        let s = try TestSupport.scenario("guest-chain")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let visits = try #require(report.faults.last?.details?.dispatch?.visits)
        #expect(visits.map(\.name) == ["InitFault", "LATEOBS #06h", "VMM", "CritFault"])
        #expect(visits.map(\.kind) == ["guest", "host", "vmm", "guest"])
        #expect(visits.map(\.tier) == [.postCriticalInit, .postCriticalInit, .vmm, .criticalInit])
        #expect(visits.map(\.disposition) == [.passedOn, .passedOn, .passedOn, .processed])
        #expect(visits.allSatisfy { $0.violations.isEmpty }, "passing on kept every register")
        #expect(report.finalRegisters?.eax == 0xC817)
        // INITDEV got the Swift LATEOBS handler's guest-visible address as its previous handler.
        let initHook = report.faults[1].details?.trace.first ?? ""
        #expect(initHook.contains("ESI=000905"), "\(initHook)")
    }

    @Test(arguments: BackendKind.allCases)
    func guestHandlerThatCorruptsEBPIsReported(backend: BackendKind) throws {
        let s = try TestSupport.scenario("guest-bad-ebp")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let handler = try #require(s.image.symbols["BadHandler"])
        let lenient = try TestSupport.runThroughVMM(s, on: backend)
        #expect(lenient.exit.reason == .halt)
        let expected = "BadHandler at \(hex(handler, prefix: "")) changed EBP"
        #expect(lenient.vmm?.diagnostics.contains { $0.contains(expected) } == true, "\(lenient.vmm?.diagnostics ?? [])")
        let strict = try TestSupport.runThroughVMM(s, on: backend, strict: true)
        #expect(strict.exit.reason == .handlerError && strict.exit.exitCode == 7)
        #expect(strict.exit.message.contains("EBP"))
    }

    @Test(arguments: BackendKind.allCases)
    func synchronousServiceFromAGuestHandlerIsReported(backend: BackendKind) throws {
        let s = try TestSupport.scenario("guest-sync-service")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let diagnostics = report.vmm?.diagnostics ?? []
        #expect(diagnostics.contains { $0.contains("synchronous service Hook_VMM_Fault called from a fault handler") && $0.contains("Handler") })
        #expect(!diagnostics.contains { $0.contains("Get_Cur_VM_Handle") })
    }

    @Test(arguments: BackendKind.allCases)
    func unhandledFaultInGuestDeviceCodeNamesTheDevice(backend: BackendKind) throws {
        let s = try TestSupport.scenario("guest-fatal")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        let begin = try #require(s.image.symbols["FAULTY_code_begin"])
        let bad = try #require(s.image.symbols["bad_instruction"])
        #expect(report.exit.reason == .unhandledFault)
        #expect(report.exit.message == "A fatal exception 0D has occurred at 0028:\(hex(bad, prefix: "")) in VxD FAULTY(01) + \(hex(bad - begin, prefix: "")).")
    }

    static let jumpSource = """
        #include "vmm.inc"
            .globl _start
        _start:
            call proc
        after:
            hlt
        proc:
            VMMjmp Get_VMM_Version   // the service returns to proc's caller
            movl $0xBAD, %eax        // never runs
            ret
        """

    @Test(arguments: BackendKind.allCases)
    func vmmjmpReturnsToTheCallersCaller(backend: BackendKind) throws {
        try TestSupport.requireBackend(backend, needs: [])
        let image = try GuestAssembler.assemble(source: Self.jumpSource, name: "vmmjmp.S")
        let after = try #require(image.symbols["after"])
        let report = try TestSupport.runThroughVMM(Scenario(image: image), on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        #expect(report.finalRegisters.map { $0.eax & 0xFFFF } == 0x040A)
        #expect(report.finalRegisters?.eip == after + 1)
        #expect(report.finalRegisters?.esp == MemoryMap.ring0StackTop)
    }

    @Test(arguments: BackendKind.allCases)
    func unknownServiceEndsTheRunWithAFatalError(backend: BackendKind) throws {
        try TestSupport.requireBackend(backend, needs: [])
        let src = "#include \"vmm.inc\"\n    .globl _start\n_start:\n    VxDcall 0x1234, 0x0042\n    hlt\n"
        let report = try TestSupport.runThroughVMM(Scenario(image: try GuestAssembler.assemble(source: src)), on: backend)
        #expect(report.exit.reason == .fatalError && report.exit.exitCode == 3)
        #expect(report.exit.message.contains("Invalid VxD dynamic link call"))
    }

    @Test func guestAndSwiftDevicesGetControlMessagesInInitOrder() throws {
        let src = """
            #include "vmm.inc"
                Declare_Virtual_Device EARLY, 1, 0, ctl, 0x7A10, 0x1000
                Declare_Virtual_Device LATE, 1, 0, ctl, 0x7A11, 0x3000
            ctl:
                CHECKPOINT 0x11, %eax
                clc
                ret
                .globl _start
            _start:
                hlt
            """
        var c = RunConfiguration()
        c.backend = .interpreter
        c.devices = ["late-observer"]     // Swift, init order 2000h
        let report = try Harness.run(Scenario(image: try GuestAssembler.assemble(source: src)), configuration: c)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let boot = report.vmm?.boot ?? []
        func first(_ name: String, _ message: String) -> Int? { boot.firstIndex { $0.contains(name) && $0.contains(message) } }
        let e = first("EARLY", "Sys_Critical_Init"), l = first("LATEOBS", "Sys_Critical_Init"), t = first("LATE ", "Sys_Critical_Init") ?? first("LATE(", "Sys_Critical_Init") ?? boot.firstIndex { $0.contains("LATE") && !$0.contains("LATEOBS") && $0.contains("Sys_Critical_Init") }
        #expect(e != nil && l != nil && t != nil, "\(boot)")
        if let e, let l, let t { #expect(e < l && l < t) }
        // Each guest control procedure saw the messages as EAX (checkpoints in order).
        let messages = report.checkpoints.map(\.value)
        #expect(Array(messages.prefix(6)) == [0, 0, 1, 1, 2, 2], "\(messages)")
    }
}
