import Foundation
import Testing
@testable import VMMHarness

/// Hook_PM_Fault, Hook_V86_Fault, their Unhook_* services, Get_Fault_Hook_Addrs and dispatch by
/// chain kind. No CPU: synthetic frames (helpers in VMMHookTests.swift).
@Suite struct VMMFamilyFaultTests {
    private func call(_ vmm: VirtualMachineManager, _ ordinal: UInt16, eax: UInt32, esi: UInt32 = 0) throws
        -> ServiceRegisters
    {
        var r = ServiceRegisters(eax: eax, edx: 0xDDDD_DDDD, esi: esi, edi: 0xEEEE_EEEE)
        #expect(try vmm.callService(VMMServiceID(ordinal: ordinal), registers: &r) == .returned)
        return r
    }

    @Test(arguments: [FaultChainKind.pm, .v86])
    func hookValidationAndPreviousThroughBothFaces(_ chain: FaultChainKind) throws {
        let vmm = VirtualMachineManager()
        let ordinal = VMMServiceOrdinal.hookFault(chain)
        // Refused: 02h, 50h (the PIC's), anything above 4Fh in the whole of EAX. Nothing installed.
        for bad: UInt32 in [0x02, 0x50, 0x5F, 0x100, 0xFFFF_FFFF, 0x0000_010D] {
            #expect(throws: FaultHookError.invalidFaultNumber(bad)) {
                try vmm.hookFault(chain, bad, name: "X", handler: passOn)
            }
            let r = try call(vmm, ordinal, eax: bad, esi: 0x0010_0040)
            #expect(r.carry && r.esi == 0x0010_0040)
        }
        let byName = chain == .pm
            ? try vmm.hookPMFault(0x0D, name: "A", handler: passOn)
            : try vmm.hookV86Fault(0x0D, name: "A", handler: passOn)
        #expect(byName == nil)
        let a = try #require(vmm.faultChain(chain, 0x0D).first).address
        // Register face: previous = A; then Swift face: previous = the guest handler.
        let r = try call(vmm, ordinal, eax: 0x0D, esi: 0x0010_0040)
        #expect(!r.carry && r.esi == a.rawValue)
        let previous = chain == .pm
            ? try vmm.hookPMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0080))
            : try vmm.hookV86Fault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0080))
        #expect(previous == FaultHandlerAddress(0x0010_0040))
        #expect(vmm.faultChain(chain, 0x0D).map(\.address.rawValue) == [0x0010_0080, 0x0010_0040, a.rawValue])
        // Address 0 refused; the other chains and the other vectors stay empty.
        #expect(try call(vmm, ordinal, eax: 0x0D, esi: 0).carry)
        for other in FaultChainKind.allCases where other != chain { #expect(vmm.faultChain(other, 0x0D).isEmpty) }
        #expect(vmm.faultChain(chain, 0x0E).isEmpty)
    }

    /// The same vector hooked in all three chains: each dispatch visits its own chain only.
    @Test func dispatchVisitsOnlyTheChainOfTheFaultsMode() throws {
        let vmm = VirtualMachineManager()
        var visited: [String] = []
        for chain in FaultChainKind.allCases {
            for n in ["low", "high"] {
                try vmm.hookFault(chain, 0x0D, name: "\(chain)-\(n)") { _, _, ctx in
                    visited.append("\(chain)-\(n)")
                    #expect(ctx.vector == 0x0D)
                    return .passedOn
                }
            }
        }
        for chain in FaultChainKind.allCases {
            visited = []
            var frame = sampleFrame()
            let out = try vmm.dispatchFault(chain, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                            entryRegisters: sampleEntryRegisters())
            #expect(visited == ["\(chain)-high", "\(chain)-low"])
            #expect(out.trace.chain == chain)
            #expect(out.trace.visits.map(\.name) == ["\(chain)-high", "\(chain)-low"])
        }
        // The old signature is the VMM chain.
        visited = []
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(visited == ["VMM-high", "VMM-low"] && out.trace.chain == .vmm)
        #expect(out.trace.description.hasPrefix("fault 0Dh at "))
    }

    @Test func unprocessedApplicationFaultsGetTheApplicationReport() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        var frame = sampleFrame(eip: 0x0040_1234)
        frame.cs = 0x001B
        let pm = try vmm.dispatchFault(.pm, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                       entryRegisters: sampleEntryRegisters())
        guard case let .unhandled(report) = pm.result else { Issue.record("\(pm.result)"); return }
        #expect(report.message == "An exception 0D has occurred at 001B:00401234 in a protected-mode application.")
        #expect(report.chain == .pm && report.deviceName == nil)
        #expect(pm.trace.visits.map(\.name) == ["VMM"] && pm.trace.visits[0].tier == .vmm)
        #expect(pm.trace.description.hasPrefix("PM fault 0Dh at 001B:00401234"))

        var v86 = sampleFrame(eip: 0x0000_0056)
        v86.cs = 0x1234
        let out = try vmm.dispatchFault(.v86, vector: 0x06, frame: &v86, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        guard case let .unhandled(r86) = out.result else { Issue.record("\(out.result)"); return }
        #expect(r86.message == "An exception 06 has occurred at 1234:0056 in V86 mode.")
        // The ring-0 chain keeps the fatal-exception wording.
        var ring0 = sampleFrame()
        let vmmOut = try vmm.dispatchFault(.vmm, vector: 0x0D, frame: &ring0, frameAddress: frameAddress,
                                           entryRegisters: sampleEntryRegisters())
        guard case let .unhandled(fatal) = vmmOut.result else { Issue.record("\(vmmOut.result)"); return }
        #expect(fatal.message.hasPrefix("A fatal exception 0D has occurred at 0028:00100005"))
        let back = try JSONDecoder().decode(FatalExceptionReport.self, from: JSONEncoder().encode(report))
        #expect(back == report)
    }

    @Test func theVMMsOwnPMAndV86HandlersFollowTheirPolicies() throws {
        var config = VMMConfiguration()
        config.ownPMFaultPolicy = .processing([0x0D])
        let vmm = VirtualMachineManager(configuration: config)
        try vmm.boot()
        let pmHead = try #require(vmm.faultChain(.pm, 0x0D).first)
        #expect(pmHead.address == VMMHostArea.ownHandlerAddress(.pm, vector: 0x0D))
        #expect(pmHead.name == "VMM" && pmHead.tier == .vmm && vmm.isHostHandler(pmHead.address))
        var frame = sampleFrame()
        let pm = try vmm.dispatchFault(.pm, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                       entryRegisters: sampleEntryRegisters())
        #expect(pm.result == .processed(by: pmHead.address, name: "VMM"))
        let v86 = try vmm.dispatchFault(.v86, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        guard case .unhandled = v86.result else { Issue.record("\(v86.result)"); return }
        // Reserved slots: a Swift hook after boot still gets the slot after the VMM chain's 79.
        try vmm.hookPMFault(0x0D, name: "LATE", handler: passOn)
        #expect(vmm.faultChain(.pm, 0x0D)[0].address == FaultHandlerAddress(MemoryMap.hostAreaBase + 79 * 16))
        let log = try #require(vmm.bootLog.first { $0.kind == .vmmHandlersInstalled })
        #expect(log.detail == "installed its own fault handlers for 79 vectors (and 79 PM, 79 V86)")
    }

    @Test func getFaultHookAddrsReportsEachChainsHead() throws {
        let vmm = VirtualMachineManager()
        // Before any hook: zeros, CF clear.
        var r = try call(vmm, VMMServiceOrdinal.getFaultHookAddrs, eax: 0x0D)
        #expect(!r.carry && r.edx == 0 && r.esi == 0 && r.edi == 0)
        #expect(try vmm.getFaultHookAddrs(0x0D) == FaultHookAddresses(v86: nil, pm: nil, vmm: nil))
        // Invalid numbers: CF set, registers untouched.
        for bad: UInt32 in [0x02, 0x50, 0xFFFF_FFFF] {
            r = try call(vmm, VMMServiceOrdinal.getFaultHookAddrs, eax: bad, esi: 0x1234)
            #expect(r.carry && r.edx == 0xDDDD_DDDD && r.esi == 0x1234 && r.edi == 0xEEEE_EEEE)
            #expect(throws: FaultHookError.invalidFaultNumber(bad)) { try vmm.getFaultHookAddrs(bad) }
        }
        try vmm.hookVMMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0100))
        try vmm.hookVMMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0110))  // newest VMM
        _ = try call(vmm, VMMServiceOrdinal.hookPMFault, eax: 0x0D, esi: 0x0010_0200)
        _ = try call(vmm, VMMServiceOrdinal.hookV86Fault, eax: 0x0D, esi: 0x0010_0300)
        let swiftV86 = try vmm.hookV86Fault(0x0D, name: "V86B", handler: passOn)
        #expect(swiftV86 == FaultHandlerAddress(0x0010_0300))
        let v86Head = vmm.faultChain(.v86, 0x0D)[0].address
        r = try call(vmm, VMMServiceOrdinal.getFaultHookAddrs, eax: 0x0D)
        #expect(!r.carry && r.edx == v86Head.rawValue && r.esi == 0x0010_0200 && r.edi == 0x0010_0110)
        let swift = try vmm.getFaultHookAddrs(0x0D)
        #expect(swift == FaultHookAddresses(v86: v86Head, pm: FaultHandlerAddress(0x0010_0200),
                                           vmm: FaultHandlerAddress(0x0010_0110)))
        #expect(swift[.pm] == FaultHandlerAddress(0x0010_0200))
        // Another vector is still empty; after boot every chain has the VMM's handler at least.
        #expect(try vmm.getFaultHookAddrs(0x0E) == FaultHookAddresses(v86: nil, pm: nil, vmm: nil))
        try vmm.boot()
        let e = try vmm.getFaultHookAddrs(0x0E)
        #expect(e.pm == VMMHostArea.ownHandlerAddress(.pm, vector: 0x0E))
        #expect(e.v86 == VMMHostArea.ownHandlerAddress(.v86, vector: 0x0E))
        #expect(e.vmm.flatMap { vmm.handlerName(at: $0) } == "VMM")
    }

    @Test(arguments: [FaultChainKind.pm, .v86])
    func unhookRelinksWithinItsChainOnly(_ chain: FaultChainKind) throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        let a = FaultHandlerAddress(0x0010_0A00), b = FaultHandlerAddress(0x0010_0B00), c = FaultHandlerAddress(0x0010_0C00)
        for h in [a, b, c] { try vmm.hookFault(chain, 0x0E, handlerAt: h) }
        try vmm.hookVMMFault(0x0E, handlerAt: b)  // same address in the VMM chain: untouched
        // Register face removes B from this chain: C now passes on to A.
        let r = try call(vmm, VMMServiceOrdinal.unhookFault(chain), eax: 0x0E, esi: b.rawValue)
        #expect(!r.carry)
        #expect(vmm.faultChain(chain, 0x0E).map(\.address) == [c, a])
        #expect(vmm.faultChain(chain, 0x0E)[0].previous == a)
        #expect(vmm.faultChain(.vmm, 0x0E).map(\.address) == [b])
        #expect(callout.relinks.count == 1 && callout.relinks[0].0 == c && callout.relinks[0].2 == a)
        // Not hooked (any more) in this chain: CF set / .notHooked; wrong chain likewise.
        #expect(try call(vmm, VMMServiceOrdinal.unhookFault(chain), eax: 0x0E, esi: b.rawValue).carry)
        let other: FaultChainKind = chain == .pm ? .v86 : .pm
        #expect(throws: FaultHookError.notHooked(interrupt: 0x0E, handler: a)) {
            try vmm.unhookFault(other, 0x0E, handlerAt: a)
        }
        #expect(throws: FaultHookError.invalidFaultNumber(2)) { try vmm.unhookFault(chain, 2, handlerAt: a) }
        // Swift face removes the head.
        if chain == .pm { try vmm.unhookPMFault(0x0E, handlerAt: c) } else { try vmm.unhookV86Fault(0x0E, handlerAt: c) }
        #expect(vmm.faultChain(chain, 0x0E).map(\.address) == [a])
        #expect(try vmm.getFaultHookAddrs(0x0E)[chain] == a)
    }

    /// The DDK's three groups hold in the PM and V86 chains too.
    @Test(arguments: [FaultChainKind.pm, .v86])
    func threeTierOrder(_ chain: FaultChainKind) throws {
        let vmm = VirtualMachineManager()
        var visited: [String] = []
        func recorder(_ n: String) -> FaultProc { { _, _, _ in visited.append(n); return .passedOn } }
        let early = TestDevice("EARLY", order: 0x100) { m, vmm in
            if m == .sysCriticalInit { _ = try? vmm.hookFault(chain, 0x0D, name: "EARLY", handler: recorder("EARLY")) }
            return true
        }
        let mid = TestDevice("MID", order: 0x200) { m, vmm in
            if m == .deviceInit { _ = try? vmm.hookFault(chain, 0x0D, name: "MID", handler: recorder("MID")) }
            return true
        }
        try vmm.register(early); try vmm.register(mid)
        try vmm.boot()
        try vmm.hookFault(chain, 0x0D, name: "LATE", handler: recorder("LATE"))
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(chain, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(out.trace.visits.map(\.name) == ["LATE", "MID", "VMM", "EARLY"])
        #expect(out.trace.visits.map(\.tier) == [.postCriticalInit, .postCriticalInit, .vmm, .criticalInit])
        #expect(visited == ["LATE", "MID", "EARLY"])
        #expect(vmm.faultChain(chain, 0x0D).map(\.owner) == [nil, "MID", nil, "EARLY"])
        #expect(vmm.faultChain(.vmm, 0x0D).map(\.name) == ["VMM"])
    }

    /// Guest and Swift handlers mixed in a PM chain, through a mock callout.
    @Test func guestAndSwiftHandlersMixInThePMChain() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        vmm.guestHandlerNames[FaultHandlerAddress(0x0010_0300)] = "GuestTop"
        try vmm.hookPMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0400))  // bottom guest: processes
        try vmm.hookPMFault(0x0D, name: "SwiftMid") { r, f, ctx in
            #expect(ctx.previous == FaultHandlerAddress(0x0010_0400))
            return .passedOn
        }
        try vmm.hookPMFault(0x0D, handlerAt: FaultHandlerAddress(0x0010_0300))  // top guest: passes on
        callout.behaviour = { call, frame in
            if call.handler == FaultHandlerAddress(0x0010_0400) {
                frame.eip &+= 2
                var r = call.registers
                r.eax = 0x600D
                return GuestFaultHandlerReturn(disposition: .processed, registers: r)
            }
            return GuestFaultHandlerReturn(disposition: .passedOn, registers: call.registers)
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(.pm, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(out.trace.visits.map(\.name) == ["GuestTop", "SwiftMid", "guest handler"])
        #expect(out.trace.visits.map(\.kind) == ["guest", "host", "guest"])
        #expect(out.result == .processed(by: FaultHandlerAddress(0x0010_0400), name: "guest handler"))
        #expect(callout.calls.map(\.role) == [.fault(.pm), .fault(.pm)])
        #expect(callout.calls[0].previous == vmm.faultChain(.pm, 0x0D)[1].address)
        #expect(callout.calls.allSatisfy { $0.registers.ebx == vmm.currentVM && $0.registers.ebp == frameAddress })
        #expect(frame.eip == 0x0010_0007 && out.registers.eax == 0x600D)
        #expect(vmm.diagnostics.isEmpty)
    }

    @Test func registerRulesAndAsyncRuleApplyInThePMChain() throws {
        var config = VMMConfiguration()
        config.strictRegisterRules = true
        let vmm = VirtualMachineManager(configuration: config)
        try vmm.hookPMFault(0x0D, name: "BAD") { r, _, ctx in
            _ = try? ctx.vmm.hookV86Fault(0x0E, name: "x", handler: passOn)  // synchronous from a handler
            r.ebp = 0
            return .processed
        }
        var frame = sampleFrame()
        do {
            _ = try vmm.dispatchFault(.pm, vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                      entryRegisters: sampleEntryRegisters())
            Issue.record("strict mode did not throw")
        } catch {
            guard case let .registerViolation(v, trace) = error else { Issue.record("\(error)"); return }
            #expect(v.register == "EBP" && trace.chain == .pm)
            #expect(trace.visits[0].serviceCalls.map(\.name) == ["Hook_V86_Fault"])
        }
        #expect(vmm.diagnostics.contains(.synchronousServiceFromFaultHandler(
            service: "Hook_V86_Fault", handler: "BAD at \(vmm.faultChain(.pm, 0x0D)[0].address)")))
    }

    @Test func serviceTableHasTheFamilyWithSynchronousFlags() {
        let table = VMMServiceTable.standard
        let expected: [UInt16: String] = [
            0x16: "Get_NMI_Handler_Addr", 0x17: "Set_NMI_Handler_Addr", 0x18: "Hook_NMI_Event",
            0x7E: "Get_Fault_Hook_Addrs", 0x7F: "Hook_V86_Fault", 0x80: "Hook_PM_Fault", 0x81: "Hook_VMM_Fault",
            0x119: "Unhook_V86_Fault", 0x11A: "Unhook_PM_Fault", 0x11B: "Unhook_VMM_Fault",
        ]
        for (ordinal, name) in expected {
            let s = table[ordinal]
            #expect(s?.name == name)
            #expect(s?.isAsynchronous == false, "\(name) is an initialization-time service")
        }
        #expect(VMMServiceID(vmmcallOperand: 0x0001_0080).ordinal == VMMServiceOrdinal.hookPMFault)
    }
}
