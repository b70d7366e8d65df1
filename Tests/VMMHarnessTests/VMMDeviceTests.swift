import Testing
@testable import VMMHarness

@Suite struct VMMDeviceTests {
    @Test func controlMessagesGoInInitOrderTiesByRegistration() throws {
        let vmm = VirtualMachineManager()
        let late = TestDevice("LATE", order: 0x9000)
        let first = TestDevice("FIRST", order: 0x0100)
        let tieA = TestDevice("TIEA", order: 0x5000)
        let tieB = TestDevice("TIEB", order: 0x5000)
        for d in [late, tieA, first, tieB] { try vmm.register(d) }
        let log = try vmm.boot()
        #expect(vmm.phase == .running)
        let messages = log.filter { $0.kind == .controlMessage }.map { "\($0.message?.name ?? "") \($0.device ?? "")" }
        var expected: [String] = []
        for m in ["Sys_Critical_Init", "Device_Init", "Init_Complete", "Sys_VM_Init"] {
            expected += ["FIRST", "TIEA", "TIEB", "LATE"].map { "\(m) \($0)" }
        }
        #expect(messages == expected)
        // The VMM installs its handlers right after Sys_Critical_Init.
        let installIndex = try #require(log.firstIndex { $0.kind == .vmmHandlersInstalled })
        #expect(log[installIndex - 1].message == .sysCriticalInit && log[installIndex + 1].message == .deviceInit)
        #expect(first.interruptsSeen[.sysCriticalInit] == false)
        #expect(first.interruptsSeen[.deviceInit] == true && first.interruptsSeen[.sysVMInit] == true)

        vmm.shutdown()
        #expect(first.received == [.sysCriticalInit, .deviceInit, .initComplete, .sysVMInit,
                                   .sysVMTerminate, .systemExit, .sysCriticalExit])
        #expect(first.interruptsSeen[.systemExit] == true && first.interruptsSeen[.sysCriticalExit] == false)
        #expect(vmm.phase == .shutDown)
        #expect(ControlMessage.sysCriticalExit.rawValue == 6 && ControlMessage.sysVMInit.rawValue == 3)
    }

    @Test func deviceFailingSysCriticalInitIsNotLoadedAndItsHooksAreRemoved() throws {
        let vmm = VirtualMachineManager()
        let good = TestDevice("GOOD", order: 0x100) { m, vmm in
            if m == .sysCriticalInit { _ = try? vmm.hookVMMFault(0x0D, name: "GOOD", handler: passOn) }
            return true
        }
        let bad = TestDevice("BAD", order: 0x200) { m, vmm in
            guard m == .sysCriticalInit else { return true }
            _ = try? vmm.hookVMMFault(0x0D, name: "BAD", handler: passOn)
            _ = try? vmm.hookVMMFault(0x0E, name: "BAD", handler: passOn)
            return false
        }
        let after = TestDevice("AFTER", order: 0x300)
        for d in [good, bad, after] { try vmm.register(d) }
        let log = try vmm.boot()
        #expect(bad.received == [.sysCriticalInit])
        #expect(after.received == [.sysCriticalInit, .deviceInit, .initComplete, .sysVMInit])
        #expect(vmm.faultChain(0x0D).map(\.name) == ["VMM", "GOOD"])
        #expect(vmm.faultChain(0x0E).map(\.name) == ["VMM"])
        let unload = try #require(log.first { $0.kind == .deviceUnloaded })
        #expect(unload.device == "BAD")
        #expect(unload.description.contains("not loaded (failed Sys_Critical_Init); unhooked 0Eh"))
        #expect(unload.description.contains("0Dh"))
        #expect(vmm.deviceStates.map(\.loaded) == [true, false, true])
        vmm.shutdown()
        #expect(bad.received == [.sysCriticalInit])
    }

    @Test func deviceFailingDeviceInitIsDroppedWithItsHooks() throws {
        let vmm = VirtualMachineManager()
        let flaky = TestDevice("FLAKY") { m, vmm in
            switch m {
            case .sysCriticalInit:
                _ = try? vmm.hookVMMFault(0x06, name: "FLAKY-crit", handler: passOn)
                return true
            case .deviceInit:
                _ = try? vmm.hookVMMFault(0x06, name: "FLAKY-dev", handler: passOn)
                return false
            default:
                return true
            }
        }
        try vmm.register(flaky)
        try vmm.boot()
        #expect(flaky.received == [.sysCriticalInit, .deviceInit])
        // Both hooks were made while FLAKY's control procedure ran: both go (the critical-init one is
        // relinked out from under the VMM's handler).
        #expect(vmm.faultChain(0x06).map(\.name) == ["VMM"])
        #expect(vmm.faultChain(0x06).first?.previous == nil)
    }

    @Test func sysVMInitFailureEndsBoot() throws {
        let vmm = VirtualMachineManager()
        try vmm.register(TestDevice("NOVM") { m, _ in m != .sysVMInit })
        #expect(throws: BootError.sysVMInitFailed(device: "NOVM")) { try vmm.boot() }
        #expect(vmm.phase == .failed)
        #expect(throws: BootError.alreadyBooted) { try vmm.boot() }
    }

    @Test func registrationIsValidated() throws {
        let vmm = VirtualMachineManager()
        #expect(throws: DeviceRegistrationError.invalidName("TOOLONGNAME")) {
            try vmm.register(TestDevice("TOOLONGNAME"))
        }
        #expect(throws: DeviceRegistrationError.invalidName("")) { try vmm.register(TestDevice("")) }
        #expect(throws: DeviceRegistrationError.duplicateDeviceID(1, existing: "VMM")) {
            try vmm.register(TestDevice("FAKEVMM", id: 1))
        }
        try vmm.register(TestDevice("VPICD", id: 3))
        #expect(throws: DeviceRegistrationError.duplicateDeviceID(3, existing: "VPICD")) {
            try vmm.register(TestDevice("OTHER", id: 3))
        }
        try vmm.register(TestDevice("ANON1"))  // Undefined_Device_ID may repeat
        try vmm.register(TestDevice("ANON2"))
        try vmm.boot()
        #expect(throws: DeviceRegistrationError.alreadyBooted("LATE")) { try vmm.register(TestDevice("LATE")) }
    }
}
