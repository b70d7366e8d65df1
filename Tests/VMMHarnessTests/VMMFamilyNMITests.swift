import Testing
@testable import VMMHarness

/// Get_NMI_Handler_Addr, Set_NMI_Handler_Addr, Hook_NMI_Event and `dispatchNMI`.
@Suite struct VMMFamilyNMITests {
    private func service(_ vmm: VirtualMachineManager, _ ordinal: UInt16, esi: UInt32 = 0) throws -> ServiceRegisters {
        var r = ServiceRegisters(esi: esi)
        _ = try vmm.callService(VMMServiceID(ordinal: ordinal), registers: &r)
        return r
    }

    private func nmi(_ vmm: VirtualMachineManager, frame: inout ClientRegisters) throws -> NMIDispatchOutcome {
        try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
    }

    @Test func setReturnsThePreviousThroughGet() throws {
        let vmm = VirtualMachineManager()
        let dflt = VMMHostArea.defaultNMIHandler
        #expect(vmm.getNMIHandlerAddr() == dflt)
        #expect(try service(vmm, VMMServiceOrdinal.getNMIHandlerAddr).esi == dflt.rawValue)
        // Register face: Get, then Set.
        let set = try service(vmm, VMMServiceOrdinal.setNMIHandlerAddr, esi: 0x0010_0500)
        #expect(!set.carry)
        #expect(try service(vmm, VMMServiceOrdinal.getNMIHandlerAddr).esi == 0x0010_0500)
        // Swift face: installNMIHandler returns what Get returned.
        let previous = try vmm.installNMIHandler(name: "WATCHDOG", handler: passOn)
        #expect(previous == FaultHandlerAddress(0x0010_0500))
        let current = vmm.getNMIHandlerAddr()
        #expect(vmm.isHostHandler(current) && vmm.handlerName(at: current) == "WATCHDOG")
        #expect(vmm.nmiHandlerChain().map(\.address) == [current, FaultHandlerAddress(0x0010_0500), dflt])
        #expect(vmm.nmiHandlerChain().map(\.previous) == [FaultHandlerAddress(0x0010_0500), dflt, nil])
        // Address 0: refused (harness), nothing changes.
        #expect(try service(vmm, VMMServiceOrdinal.setNMIHandlerAddr, esi: 0).carry)
        #expect(throws: NMIServiceError.nullHandler(service: "Set_NMI_Handler_Addr")) {
            try vmm.setNMIHandlerAddr(FaultHandlerAddress(0))
        }
        #expect(vmm.getNMIHandlerAddr() == current)
    }

    @Test func chainWalkThenEventsInInstallOrder() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        var order: [String] = []
        let first = TestDevice("FIRST", order: 0x100) { m, vmm in
            if m == .sysCriticalInit {
                _ = try? vmm.hookNMIEvent(name: "EV1") { r, _, _ in order.append("EV1"); r.eax = 1 }
                _ = try? vmm.installNMIHandler(name: "H1") { _, _, ctx in
                    order.append("H1")
                    #expect(ctx.previous == VMMHostArea.defaultNMIHandler && ctx.vector == 2)
                    return .passedOn
                }
            }
            return true
        }
        let second = TestDevice("SECOND", order: 0x200) { m, vmm in
            if m == .deviceInit {
                var r = ServiceRegisters(esi: 0x0010_0700)  // guest event procedure
                _ = try? vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.hookNMIEvent), registers: &r)
                _ = try? vmm.setNMIHandlerAddr(FaultHandlerAddress(0x0010_0600))  // guest handler
            }
            if m == .initComplete {
                _ = try? vmm.hookNMIEvent(name: "EV3") { _, _, _ in order.append("EV3") }
            }
            return true
        }
        try vmm.register(first); try vmm.register(second)
        try vmm.boot()
        try vmm.installNMIHandler(name: "H3") { _, _, _ in order.append("H3"); return .passedOn }
        callout.behaviour = { call, _ in
            order.append(call.role == .nmiEvent ? "guest-event" : "guest-handler")
            return GuestFaultHandlerReturn(disposition: call.role == .nmiEvent ? .processed : .passedOn,
                                           registers: call.registers)
        }
        var frame = sampleFrame()
        let out = try nmi(vmm, frame: &frame)
        #expect(order == ["H3", "guest-handler", "H1", "EV1", "guest-event", "EV3"])
        #expect(out.trace.handlers.map(\.name) == ["H3", "SECOND", "H1", "VMM"])
        #expect(out.trace.handlers.map(\.disposition) == [.passedOn, .passedOn, .passedOn, .processed])
        #expect(out.trace.handlers.last?.address == VMMHostArea.defaultNMIHandler)
        #expect(out.trace.events.map(\.name) == ["EV1", "SECOND", "EV3"])
        #expect(out.trace.events[0].registerChanges.map(\.name) == ["EAX"])
        #expect(out.endedEarlyBy == nil && out.termination == nil)
        #expect(callout.calls.map(\.role) == [.nmiHandler, .nmiEvent])
        #expect(callout.calls[0].previous == vmm.nmiHandlerChain()[2].address)  // H1
        #expect(callout.calls[1].previous == nil)
        #expect(callout.calls[1].registers.ebx == vmm.currentVM && callout.calls[1].registers.ebp == frameAddress)
        #expect(out.trace.outcome == "chain ended at the VMM's default NMI handler; 3 event procedures ran")
        #expect(out.trace.description.contains("event 3. "))
        #expect(vmm.diagnostics.isEmpty)
        #expect(vmm.interruptsEnabled && vmm.reenterCount == 0)
    }

    @Test func aServiceCallInsideAnNMIHandlerIsReportedAndStrictModeMakesItAnError() throws {
        for strict in [false, true] {
            var config = VMMConfiguration()
            config.strictRegisterRules = strict
            let vmm = VirtualMachineManager(configuration: config)
            var lowerRan = false
            try vmm.installNMIHandler(name: "LOWER") { _, _, _ in lowerRan = true; return .passedOn }
            try vmm.installNMIHandler(name: "CHATTY") { _, _, ctx in
                _ = ctx.vmm.getCurVMHandle()  // asynchronous, still forbidden here
                return .passedOn
            }
            var eventCalls = 0
            try vmm.hookNMIEvent(name: "EV") { _, _, vmm in _ = vmm.getSysVMHandle(); eventCalls += 1 }
            let chatty = vmm.getNMIHandlerAddr()
            var frame = sampleFrame()
            if strict {
                do {
                    _ = try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress,
                                            entryRegisters: sampleEntryRegisters())
                    Issue.record("strict mode did not throw")
                } catch {
                    guard case let .serviceCallFromNMIHandler(s, h, trace) = error else { Issue.record("\(error)"); continue }
                    #expect(s == "Get_Cur_VM_Handle" && h == "NMI handler CHATTY at \(chatty)")
                    #expect(trace.handlers.count == 1 && !lowerRan && eventCalls == 0)
                }
            } else {
                let out = try nmi(vmm, frame: &frame)
                #expect(lowerRan && eventCalls == 1)
                #expect(out.trace.handlers[0].serviceCalls.map(\.name) == ["Get_Cur_VM_Handle"])
                #expect(out.trace.events[0].serviceCalls.map(\.name) == ["Get_Sys_VM_Handle"])
                // Only the handler's call is reported: events are under the asynchronous rule.
                #expect(vmm.diagnostics == [.serviceCallFromNMIHandler(service: "Get_Cur_VM_Handle",
                                                                       handler: "NMI handler CHATTY at \(chatty)")])
            }
        }
    }

    @Test func hookNMIEventIsRefusedAfterInitComplete() throws {
        let vmm = VirtualMachineManager()
        var duringInit: [Bool] = []
        let dev = TestDevice("DEV") { m, vmm in
            let ok = (try? vmm.hookNMIEvent(name: "E\(m.rawValue)") { _, _, _ in }) != nil
            if m == .sysCriticalInit || m == .deviceInit || m == .initComplete || m == .sysVMInit { duringInit.append(ok) }
            return true
        }
        try vmm.register(dev)
        try vmm.boot()
        #expect(duringInit == [true, true, true, false])
        #expect(throws: NMIServiceError.afterInitialization(phase: .running)) {
            try vmm.hookNMIEvent(name: "LATE") { _, _, _ in }
        }
        let r = try service(vmm, VMMServiceOrdinal.hookNMIEvent, esi: 0x0010_0700)
        #expect(r.carry)
        #expect(vmm.nmiEventProcedures.map(\.name) == ["E0", "E1", "E2"])
        #expect(vmm.diagnostics.contains { if case .serviceRefused("Hook_NMI_Event", _) = $0 { true } else { false } })
        // Address 0 refused before boot too.
        #expect(throws: NMIServiceError.nullHandler(service: "Hook_NMI_Event")) {
            try VirtualMachineManager().hookNMIEvent(procedureAt: FaultHandlerAddress(0))
        }
    }

    @Test func aGuestNMIHandlerThatReturnsEndsTheChainEarlyAndIsReported() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        var lowerRan = false
        try vmm.installNMIHandler(name: "LOWER") { _, _, _ in lowerRan = true; return .passedOn }
        vmm.guestHandlerNames[FaultHandlerAddress(0x0010_0900)] = "GuestNMI"
        try vmm.setNMIHandlerAddr(FaultHandlerAddress(0x0010_0900))
        var eventRan = false
        try vmm.hookNMIEvent(name: "EV") { _, _, _ in eventRan = true }
        callout.behaviour = { call, _ in GuestFaultHandlerReturn(disposition: .processed, registers: call.registers) }
        var frame = sampleFrame()
        let out = try nmi(vmm, frame: &frame)
        #expect(!lowerRan && eventRan)
        #expect(out.endedEarlyBy == FaultHandlerAddress(0x0010_0900))
        #expect(out.trace.handlers.map(\.name) == ["GuestNMI"])
        #expect(vmm.diagnostics == [.nmiChainEndedEarly(handler: "GuestNMI", address: FaultHandlerAddress(0x0010_0900))])
        #expect(out.trace.outcome.hasPrefix("chain ended early: GuestNMI at 00100900"))
    }

    @Test func nmiNestsInAFaultButNotInItselfAndFaultsCannotNestInIt() throws {
        let vmm = VirtualMachineManager()
        var nested: NMIDispatchError?
        var faultInNMI: FaultDispatchError?
        try vmm.installNMIHandler(name: "H") { _, _, ctx in
            var f = sampleFrame()
            do { _ = try ctx.vmm.dispatchNMI(frame: &f, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters()) }
            catch let e as NMIDispatchError { nested = e } catch { Issue.record("\(error)") }
            do { _ = try ctx.vmm.dispatchFault(vector: 0x0D, frame: &f, frameAddress: frameAddress,
                                               entryRegisters: sampleEntryRegisters()) }
            catch let e as FaultDispatchError { faultInNMI = e } catch { Issue.record("\(error)") }
            return .passedOn
        }
        var nmiInFault: NMIDispatchOutcome?
        try vmm.hookVMMFault(0x0E, name: "PF") { _, _, ctx in
            var f = sampleFrame()
            nmiInFault = try? ctx.vmm.dispatchNMI(frame: &f, frameAddress: frameAddress,
                                                  entryRegisters: sampleEntryRegisters())
            return .processed
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0E, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(nmiInFault?.trace.handlers.map(\.name) == ["H", "VMM"])
        #expect(nested == .nestedNMI)
        #expect(faultInNMI == .reentrantDispatch(vector: 0x0D, activeVector: 0x02))
        // The fault's own trace is intact after the NMI.
        #expect(out.trace.visits.map(\.name) == ["PF"] && out.trace.visits[0].serviceCalls.isEmpty)
    }
}
