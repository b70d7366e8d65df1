import Foundation
import Testing
@testable import VMMHarness

/// The rest of the fault-hook family on a real guest: the mode a fault comes from picks the chain,
/// NMIs walk the NMI chain, IRQs reach the virtual PIC.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble scenarios"))
struct FaultFamilyTests {
    @Test(arguments: BackendKind.allCases)
    func eachModeReachesOnlyItsOwnChain(backend: BackendKind) throws {
        let s = try TestSupport.scenario("modes")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        #expect(report.exit.reason == .halt, "\(report.exit.message)")
        let ud = report.faults.filter { $0.vector == 0x06 }
        #expect(ud.count == 3)
        #expect(ud.map { $0.details?.dispatch?.chain } == [.vmm, .pm, .v86])
        #expect(ud.map { $0.details?.dispatch?.visits.map(\.name) ?? [] } == [["VmmUD"], ["PmUD"], ["V86UD"]])
        // The V86 frame carries the V86 segment registers the CPU pushed, field by field.
        let v86 = try #require(ud.last?.frame)
        #expect(v86["Client_CS"] == 0xFFFF && v86["Client_SS"] == 0x0700 && v86["Client_DS"] == 0xFFFF)
        #expect(v86["Client_EFlags"].map { $0 & EFlags.vm != 0 } == true)
        #expect(ud[1].frame?["Client_CS"] == 0x1B && ud[1].frame?["Client_SS"] == 0x23 && ud[1].ring == 3)
        #expect(report.finalRegisters?.eax == 3)
    }

    @Test(arguments: BackendKind.allCases)
    func nmiAndIRQ(backend: BackendKind) throws {
        let s = try TestSupport.scenario("nmi-irq")
        try TestSupport.requireBackend(backend, needs: s.needs)
        let report = try TestSupport.runThroughVMM(s, on: backend)
        let problems = s.check(report)
        #expect(problems.isEmpty, "\(problems)")
        let nmi = try #require(report.faults.first)
        #expect(nmi.details?.trace.contains { $0.contains("PICNMI NMI [") && $0.contains("passed on") } == true)
        #expect(nmi.details?.trace.contains { $0.contains("event 1.") } == true)
        #expect(report.faults.last?.handledBy == "IRQ 3: PICNMI IRQ 3")
    }

    @Test func getFaultHookAddrsFromTheGuest() throws {
        let src = """
            #include "vmm.inc"
                .globl _start
            _start:
                movl $0x0D, %eax
                movl $vmm_h, %esi
                VMMcall Hook_VMM_Fault
                movl $0x0D, %eax
                movl $pm_h, %esi
                VMMcall Hook_PM_Fault
                movl $0x0D, %eax
                VMMcall Get_Fault_Hook_Addrs
                hlt
            vmm_h:
                ret
            pm_h:
                ret
            """
        let image = try GuestAssembler.assemble(source: src)
        let report = try TestSupport.runThroughVMM(Scenario(image: image), on: .interpreter)
        let regs = try #require(report.finalRegisters)
        #expect(regs.edi == image.symbols["vmm_h"] && regs.esi == image.symbols["pm_h"])
        #expect(regs.edx != 0 && regs.edx >= MemoryMap.hostAreaBase, "V86: the VMM's own handler's address")
    }
}
