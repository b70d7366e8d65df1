import Testing
@testable import VMMHarness

@Suite struct VMMServiceTests {
    @Test func getVMMVersionIs040AhForWindows98() throws {
        let vmm = VirtualMachineManager()
        var r = ServiceRegisters(eax: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, eflags: 0x2 | EFlags.cf)
        let outcome = try vmm.callService(vmmcallOperand: 0x0001_0000, registers: &r)
        #expect(outcome == .returned)
        #expect(r.eax == 0x040A && r.ecx == 0 && !r.carry)
        #expect(vmm.getVMMVersion() == .windows98)
        var config = VMMConfiguration()
        config.version = .windows95
        r = ServiceRegisters()
        _ = try VirtualMachineManager(configuration: config).callService(VMMServiceID(ordinal: 0), registers: &r)
        #expect(r.eax == 0x0400)
    }

    @Test func vmHandleServices() throws {
        let vmm = VirtualMachineManager()
        var r = ServiceRegisters()
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.getCurVMHandle), registers: &r)
        #expect(r.ebx == VMMHostArea.systemVMHandle)
        r = ServiceRegisters()
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.getSysVMHandle), registers: &r)
        #expect(r.ebx == VMMHostArea.systemVMHandle)
        r = ServiceRegisters(ebx: VMMHostArea.systemVMHandle)
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.testCurVMHandle), registers: &r)
        #expect(r.zero)
        r.ebx = 0x1234
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.testCurVMHandle), registers: &r)
        #expect(!r.zero)
        #expect(vmm.testCurVMHandle(vmm.getSysVMHandle()) && vmm.getCurVMHandle() == vmm.systemVM)
    }

    @Test func unknownServicesAreTypedErrors() {
        let vmm = VirtualMachineManager()
        var r = ServiceRegisters()
        #expect(throws: VMMServiceError.unknownService(VMMServiceID(device: 1, ordinal: 0x7FFF))) {
            try vmm.callService(vmmcallOperand: 0x0001_7FFF, registers: &r)
        }
        #expect(throws: VMMServiceError.unknownService(VMMServiceID(device: 0x000A, ordinal: 0x0081))) {
            try vmm.callService(vmmcallOperand: 0x000A_0081, registers: &r)
        }
        #expect(r == ServiceRegisters())
    }

    @Test func vmmcallOperandDecoding() {
        let id = VMMServiceID(vmmcallOperand: 0x0001_0081)
        #expect(id.device == 1 && id.ordinal == 0x81 && !id.isJump)
        let jmp = VMMServiceID(vmmcallOperand: 0x0001_80C2)
        #expect(jmp.device == 1 && jmp.ordinal == 0xC2 && jmp.isJump && jmp.vmmcallOperand == 0x0001_80C2)
        #expect(VMMServiceTable.standard[jmp.ordinal]?.name == "Out_Debug_String")
    }

    @Test func asyncFlagsFollowTheReference() {
        let table = VMMServiceTable.standard
        let sync = table.services.values.filter { !$0.isAsynchronous }.map(\.name).sorted()
        #expect(sync == ["Get_Fault_Hook_Addrs", "Get_NMI_Handler_Addr", "Hook_NMI_Event", "Hook_PM_Fault", "Hook_V86_Fault",
                         "Hook_VMM_Fault", "Set_NMI_Handler_Addr", "Unhook_PM_Fault", "Unhook_V86_Fault", "Unhook_VMM_Fault"])
        #expect(table.services.count == 20)
        let expected: [UInt16: String] = [
            0x00: "Get_VMM_Version", 0x01: "Get_Cur_VM_Handle", 0x02: "Test_Cur_VM_Handle",
            0x03: "Get_Sys_VM_Handle", 0x06: "Get_VMM_Reenter_Count", 0x07: "Begin_Reentrant_Execution",
            0x08: "End_Reentrant_Execution", 0x81: "Hook_VMM_Fault", 0x11B: "Unhook_VMM_Fault",
            0xBE: "Fatal_Error_Handler", 0xC2: "Out_Debug_String", 0xC3: "Out_Debug_Chr",
            0x16: "Get_NMI_Handler_Addr", 0x17: "Set_NMI_Handler_Addr", 0x18: "Hook_NMI_Event",
            0x7E: "Get_Fault_Hook_Addrs", 0x7F: "Hook_V86_Fault", 0x80: "Hook_PM_Fault",
            0x119: "Unhook_V86_Fault", 0x11A: "Unhook_PM_Fault",
        ]
        #expect(table.services.mapValues(\.name) == expected)
    }

    @Test func debugOutput() throws {
        let vmm = VirtualMachineManager()
        var r = ServiceRegisters(esi: 0x0010_0400)
        #expect(throws: VMMServiceError.noGuestMemory(service: "Out_Debug_String")) {
            try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.outDebugString), registers: &r)
        }
        let memory = DictionaryMemory()
        memory.put("Hello, ", at: 0x0010_0400)
        vmm.guestMemory = memory
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.outDebugString), registers: &r)
        r.eax = 0x1234_5657  // AL = 'W'
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.outDebugChr), registers: &r)
        vmm.outDebugString("orld\n")
        #expect(vmm.debugLog == "Hello, World\n")
        // A string running off the end of memory: typed error and a diagnostic, no crash.
        memory.bytes = [0x0010_0000: 0x41]
        r.esi = 0x0010_0000
        #expect(throws: VMMServiceError.self) {
            try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.outDebugString), registers: &r)
        }
        #expect(vmm.diagnostics.count == 1)
    }

    @Test func fatalErrorHandlerTerminates() throws {
        let vmm = VirtualMachineManager()
        let memory = DictionaryMemory()
        memory.put("Out of memory", at: 0x0010_0100)
        vmm.guestMemory = memory
        var r = ServiceRegisters(eax: 1, esi: 0x0010_0100)
        let outcome = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.fatalErrorHandler), registers: &r)
        let report = FatalErrorReport(message: "Out of memory", messageAddress: 0x0010_0100, flags: 1)
        #expect(outcome == .terminate(report))
        #expect(vmm.termination == report)
        // Unreadable message: still terminates.
        r.esi = 0x0020_0000
        let bad = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.fatalErrorHandler), registers: &r)
        #expect(bad == .terminate(FatalErrorReport(message: "<unreadable message at 00200000>",
                                                   messageAddress: 0x0020_0000, flags: 1)))
    }

    @Test func unbalancedEndReentrantExecutionIsReported() {
        let vmm = VirtualMachineManager()
        vmm.endReentrantExecution(5)
        #expect(vmm.getVMMReenterCount() == 0)
        #expect(vmm.diagnostics == [.unbalancedReentrantExecution])
    }
}
