import Foundation
import Testing
@testable import VMMHarness

@Suite struct VMMDispatchTests {
    /// The seed's scenario: DEVA hooks #GP during Sys_Critical_Init, the VMM installs its own,
    /// DEVB hooks at Device_Init, DEVC after boot.
    @Test func seedOrderLaterThenVMMThenCriticalInit() throws {
        let vmm = VirtualMachineManager()
        var visited: [String] = []
        func recorder(_ n: String) -> FaultProc { { _, _, _ in visited.append(n); return .passedOn } }
        let a = TestDevice("DEVA", order: 0x100) { m, vmm in
            if m == .sysCriticalInit { _ = try? vmm.hookVMMFault(0x0D, name: "DEVA", handler: recorder("DEVA")) }
            return true
        }
        let b = TestDevice("DEVB", order: 0x200) { m, vmm in
            if m == .deviceInit { _ = try? vmm.hookVMMFault(0x0D, name: "DEVB", handler: recorder("DEVB")) }
            return true
        }
        let c = TestDevice("DEVC", order: 0x300)
        try vmm.register(c); try vmm.register(b); try vmm.register(a)
        try vmm.boot()
        try vmm.hookVMMFault(0x0D, name: "DEVC", handler: recorder("DEVC"))

        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(out.trace.visits.map(\.name) == ["DEVC", "DEVB", "VMM", "DEVA"])
        #expect(out.trace.visits.map(\.tier) == [.postCriticalInit, .postCriticalInit, .vmm, .criticalInit])
        #expect(out.trace.visits.allSatisfy { $0.disposition == .passedOn })
        #expect(visited == ["DEVC", "DEVB", "DEVA"])
        #expect(vmm.faultChain(0x0D).map(\.owner) == [nil, "DEVB", nil, "DEVA"])
        guard case .unhandled = out.result else { Issue.record("expected unhandled"); return }
    }

    @Test func handlersReceiveTheCallRegistersIntactAlongTheChain() throws {
        let vmm = VirtualMachineManager()
        var seen: [HandlerRegisters] = []
        var frames: [ClientRegisters] = []
        for n in ["A", "B", "C"] {
            try vmm.hookVMMFault(0x0E, name: n) { r, f, ctx in
                seen.append(r); frames.append(f)
                #expect(ctx.vmm.interruptsEnabled == false)
                #expect(ctx.vector == 0x0E)
                return .passedOn
            }
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0E, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        var expected = sampleEntryRegisters()
        expected.ebx = vmm.currentVM
        expected.ebp = frameAddress
        expected.eflags = 0x0000_0046  // IF cleared, rest as given
        #expect(seen == [expected, expected, expected])
        #expect(frames == [sampleFrame(), sampleFrame(), sampleFrame()])
        #expect(out.registers == expected)
        #expect(out.trace.visits.allSatisfy { $0.registerChanges.isEmpty && $0.violations.isEmpty })
        #expect(vmm.diagnostics.isEmpty)
    }

    @Test func processingStopsTheWalkAndMayChangeGeneralRegistersAndFrame() throws {
        let vmm = VirtualMachineManager()
        var reachedBottom = false
        try vmm.hookVMMFault(0x0D, name: "bottom") { _, _, _ in reachedBottom = true; return .processed }
        try vmm.hookVMMFault(0x0D, name: "fixer") { r, f, _ in
            r.eax = 1; r.ebx = 2; r.ecx = 3; r.edx = 4; r.esi = 5; r.edi = 6
            r.eflags |= EFlags.cf | EFlags.zf
            f.eip += 2
            f.eax = 0xFEED
            return .processed
        }
        try vmm.hookVMMFault(0x0D, name: "top", handler: passOn)
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(!reachedBottom)
        #expect(out.result == .processed(by: FaultHandlerAddress(MemoryMap.hostAreaBase + 16), name: "fixer"))
        #expect(frame.eip == 0x0010_0007 && frame.eax == 0xFEED)
        let visit = try #require(out.trace.visits.last)
        #expect(visit.violations.isEmpty)
        #expect(visit.registerChanges.map(\.name) == ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EFLAGS"])
        #expect(visit.frameChanges == [ValueChange(name: "Client_EAX", old: 0x1111_1111, new: 0xFEED),
                                       ValueChange(name: "Client_EIP", old: 0x0010_0005, new: 0x0010_0007)])
        #expect(out.trace.visits.count == 2)
    }

    /// Each way of breaking the register rules, non-strict and strict.
    @Test(arguments: [
        ("EBP", FaultDisposition.processed),
        ("ESP", .processed),
        ("DS", .processed),
        ("SS", .processed),
        ("EFLAGS.IF", .processed),
        ("EFLAGS.DF", .processed),
        ("EAX", .passedOn),
        ("EDI", .passedOn),
        ("EFLAGS.CF", .passedOn),
        ("GS", .passedOn),
    ])
    func registerRuleViolationsAreDetected(_ what: String, _ disposition: FaultDisposition) throws {
        let change: (inout HandlerRegisters) -> Void = { r in
            switch what {
            case "EBP": r.ebp &+= 4
            case "ESP": r.esp &-= 4
            case "DS": r.ds = Selectors.ring3Data
            case "SS": r.ss = 0
            case "EFLAGS.IF": r.eflags |= EFlags.if
            case "EFLAGS.DF": r.eflags |= EFlags.df
            case "EAX": r.eax = 0xBAD
            case "EDI": r.edi = 0xBAD
            case "EFLAGS.CF": r.eflags |= EFlags.cf
            default: r.gs = 0
            }
        }
        let register = what.hasPrefix("EFLAGS") ? "EFLAGS" : what
        for strict in [false, true] {
            var config = VMMConfiguration()
            config.strictRegisterRules = strict
            let vmm = VirtualMachineManager(configuration: config)
            var bottomCalled = false
            try vmm.hookVMMFault(0x0D, name: "bottom") { _, _, _ in bottomCalled = true; return .processed }
            try vmm.hookVMMFault(0x0D, name: "BADDEV") { r, _, _ in change(&r); return disposition }
            let bad = vmm.faultChain(0x0D)[0].address
            var frame = sampleFrame()
            if strict {
                do {
                    _ = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                              entryRegisters: sampleEntryRegisters())
                    Issue.record("strict mode did not throw")
                } catch {
                    guard case let .registerViolation(v, trace) = error else { Issue.record("\(error)"); continue }
                    #expect(v.register == register && v.handlerName == "BADDEV" && v.handlerAddress == bad)
                    #expect(trace.visits.count == 1)
                    #expect(!bottomCalled)
                }
            } else {
                let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                                entryRegisters: sampleEntryRegisters())
                let v = try #require(out.trace.visits.first?.violations.first)
                #expect(v.register == register && v.handlerName == "BADDEV" && v.handlerAddress == bad)
                #expect(v.disposition == disposition)
                #expect(v.old != v.new)
                #expect(vmm.diagnostics.contains(.registerViolation(v)))
                #expect(v.description.contains("BADDEV at \(bad)"))
                #expect(bottomCalled == (disposition == .passedOn))
            }
        }
    }

    @Test func interruptsAreDisabledInsideAndFaultsInsideHandlersNest() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        #expect(vmm.interruptsEnabled)
        var nested: FaultDispatchResult?
        var countsInside: [UInt32] = []
        try vmm.hookVMMFault(0x0E, name: "PF") { _, frame, ctx in
            countsInside.append(ctx.vmm.reenterCount)
            frame.eax = 0xE
            return .processed
        }
        try vmm.hookVMMFault(0x00, name: "A") { _, _, ctx in
            #expect(!ctx.vmm.interruptsEnabled)
            countsInside.append(ctx.vmm.reenterCount)
            // A fault raised while this handler runs (the VMM's frame is re-entrant).
            var f = sampleFrame()
            do {
                nested = try ctx.vmm.dispatchFault(vector: 0x0E, frame: &f, frameAddress: frameAddress,
                                                   entryRegisters: sampleEntryRegisters()).result
            } catch { Issue.record("\(error)") }
            #expect(f.eax == 0xE)
            #expect(!ctx.vmm.interruptsEnabled)
            return .processed
        }
        var frame = sampleFrame()
        let outer = try vmm.dispatchFault(vector: 0x00, frame: &frame, frameAddress: frameAddress,
                                          entryRegisters: sampleEntryRegisters())
        if case let .processed(_, name)? = nested { #expect(name == "PF") } else { Issue.record("nested: \(String(describing: nested))") }
        if case let .processed(_, name) = outer.result { #expect(name == "A") } else { Issue.record("outer: \(outer.result)") }
        #expect(countsInside == [1, 2])
        #expect(vmm.interruptsEnabled)
        #expect(vmm.reenterCount == 0)
    }

    @Test func faultsNestedTooDeepAreRefusedNamingTheChain() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        var innermost: FaultDispatchError?
        try vmm.hookVMMFault(0x06, name: "RECURSE") { _, _, ctx in
            var f = sampleFrame()
            do {
                _ = try ctx.vmm.dispatchFault(vector: 0x06, frame: &f, frameAddress: frameAddress,
                                              entryRegisters: sampleEntryRegisters())
            } catch let e as FaultDispatchError {
                if innermost == nil { innermost = e }
            } catch { Issue.record("\(error)") }
            return .processed
        }
        var frame = sampleFrame()
        _ = try vmm.dispatchFault(vector: 0x06, frame: &frame, frameAddress: frameAddress,
                                  entryRegisters: sampleEntryRegisters())
        let expected = [UInt8](repeating: 0x06, count: VirtualMachineManager.maximumFaultNesting + 1)
        #expect(innermost == .faultNestingTooDeep(vectors: expected))
        #expect(vmm.reenterCount == 0 && vmm.interruptsEnabled)
    }

    @Test func reenterCountInsideAndOutside() throws {
        let vmm = VirtualMachineManager()
        #expect(vmm.getVMMReenterCount() == 0)
        var counts: [UInt32] = []
        try vmm.hookVMMFault(0x06, name: "A") { _, _, ctx in
            counts.append(ctx.vmm.getVMMReenterCount())
            var r = ServiceRegisters()
            _ = try? ctx.vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.getVMMReenterCount), registers: &r)
            counts.append(r.ecx)
            let old = ctx.vmm.beginReentrantExecution()
            counts.append(old)
            counts.append(ctx.vmm.getVMMReenterCount())
            ctx.vmm.endReentrantExecution(old)
            counts.append(ctx.vmm.getVMMReenterCount())
            return .processed
        }
        var frame = sampleFrame()
        _ = try vmm.dispatchFault(vector: 0x06, frame: &frame, frameAddress: frameAddress,
                                  entryRegisters: sampleEntryRegisters())
        #expect(counts == [1, 1, 1, 0, 1])
        #expect(vmm.getVMMReenterCount() == 0)
        #expect(vmm.diagnostics.isEmpty)
    }

    @Test func synchronousServiceFromAHandlerIsReportedUnlessReentrantExecution() throws {
        let vmm = VirtualMachineManager()
        try vmm.hookVMMFault(0x0D, name: "SYNC") { _, _, ctx in
            _ = try? ctx.vmm.hookVMMFault(0x42, name: "late", handler: passOn)  // synchronous: reported
            _ = ctx.vmm.getCurVMHandle()                                         // asynchronous: fine
            var r = ServiceRegisters(eax: 0x43, esi: 0x0010_0000)
            _ = try? ctx.vmm.callService(vmmcallOperand: 0x0001_0081, registers: &r)  // reported
            let old = ctx.vmm.beginReentrantExecution()
            _ = try? ctx.vmm.hookVMMFault(0x44, name: "ok", handler: passOn)      // allowed now
            ctx.vmm.endReentrantExecution(old)
            return .processed
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        let reports = vmm.diagnostics.map(\.description)
        #expect(reports.count == 2)
        #expect(reports.allSatisfy {
            $0.hasPrefix("synchronous service Hook_VMM_Fault called from a fault handler (reentrant)")
        })
        let calls = try #require(out.trace.visits.first?.serviceCalls)
        #expect(calls.map(\.name) == ["Hook_VMM_Fault", "Get_Cur_VM_Handle", "Hook_VMM_Fault",
                                      "Begin_Reentrant_Execution", "Hook_VMM_Fault", "End_Reentrant_Execution"])
        #expect(calls.map(\.violatesAsyncRule) == [true, false, true, false, false, false])
        // The services still ran.
        #expect(vmm.faultChain(0x42).count == 1 && vmm.faultChain(0x43).count == 1 && vmm.faultChain(0x44).count == 1)
        // Outside a fault handler nothing is reported.
        try vmm.hookVMMFault(0x45, name: "outside", handler: passOn)
        #expect(vmm.diagnostics.count == 2)
    }

    @Test func fatalExceptionReportNamesTheDeviceWhoseRangeHoldsEIP() throws {
        let vmm = VirtualMachineManager()
        try vmm.register(TestDevice("NAME", id: 0x0A, codeRange: 0xC000_1000..<0xC002_0000))
        try vmm.register(TestDevice("OTHER", id: 0x33, codeRange: 0x0020_0000..<0x0021_0000))
        try vmm.boot()
        var frame = sampleFrame(eip: 0xC001_3F7A)
        frame.error = 0x18
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        guard case let .unhandled(report) = out.result else { Issue.record("not unhandled"); return }
        #expect(report.message == "A fatal exception 0D has occurred at 0028:C0013F7A in VxD NAME(01) + 00012F7A.")
        #expect(report.deviceName == "NAME" && report.offset == 0x12F7A && report.errorCode == 0x18)
        #expect(report.frame.fields["Client_EIP"] == 0xC001_3F7A)
        #expect(report.frame.fields["Client_Error"] == 0x18)
        #expect(out.trace.visits.map(\.name) == ["VMM"])

        frame = sampleFrame(eip: 0x0020_0010)
        let other = try vmm.dispatchFault(vector: 0x00, frame: &frame, frameAddress: frameAddress,
                                          entryRegisters: sampleEntryRegisters())
        #expect(other.result == .unhandled(vmm.fatalExceptionReport(vector: 0, frame: frame)))
        #expect(vmm.fatalExceptionReport(vector: 0, frame: frame).message
            == "A fatal exception 00 has occurred at 0028:00200010 in VxD OTHER(01) + 00000010.")
    }

    @Test func fatalExceptionReportOutsideEveryDevice() throws {
        var config = VMMConfiguration()
        let vmm = VirtualMachineManager(configuration: config)
        var frame = sampleFrame(eip: 0x0010_0005)
        let out = try vmm.dispatchFault(vector: 0x0E, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        guard case let .unhandled(report) = out.result else { Issue.record("not unhandled"); return }
        #expect(report.message == "A fatal exception 0E has occurred at 0028:00100005.")
        #expect(report.deviceName == nil && report.offset == nil)
        #expect(out.trace.visits.isEmpty)
        // The VMM names itself when configured with a code range.
        config.vmmCodeRange = 0x0000_1000..<0x0001_0000
        let vmm2 = VirtualMachineManager(configuration: config)
        frame.eip = 0x0000_1234
        #expect(vmm2.fatalExceptionReport(vector: 0x0E, frame: frame).message
            == "A fatal exception 0E has occurred at 0028:00001234 in VxD VMM(01) + 00000234.")
    }

    @Test func vectorsWithoutAChainAreUnhandled() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        for v: UInt8 in [0x02, 0x50, 0xFF] {
            var frame = sampleFrame()
            let out = try vmm.dispatchFault(vector: v, frame: &frame, frameAddress: frameAddress,
                                            entryRegisters: sampleEntryRegisters())
            #expect(out.trace.visits.isEmpty)
            #expect(out.result == .unhandled(vmm.fatalExceptionReport(vector: v, frame: frame)))
        }
    }

    @Test func vmmOwnPolicyCanProcessSomeVectors() throws {
        var config = VMMConfiguration()
        config.ownFaultPolicy = VMMOwnFaultPolicy { v, f in
            guard v == 0x03 else { return false }
            f.eip &+= 0  // INT3 is a trap: EIP already past it
            return true
        }
        let vmm = VirtualMachineManager(configuration: config)
        var bottom = false
        try vmm.register(TestDevice("CRIT", order: 0) { m, vmm in
            if m == .sysCriticalInit {
                _ = try? vmm.hookVMMFault(0x03, name: "CRIT") { _, _, _ in bottom = true; return .processed }
            }
            return true
        })
        try vmm.boot()
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x03, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(out.trace.visits.map(\.tier) == [.vmm])
        #expect(!bottom)
        guard case let .processed(_, name) = out.result else { Issue.record("not processed"); return }
        #expect(name == "VMM")
        #expect(vmm.faultChain(0x02).isEmpty)
        #expect(vmm.faultChain(0x4F).count == 1 && vmm.faultChain(0x50).isEmpty)
    }

    @Test func guestHandlersRunThroughTheCallout() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        vmm.guestHandlerNames[FaultHandlerAddress(0x0010_0200)] = "guest_gp"
        try vmm.hookVMMFault(0x0D, name: "host", handler: process)
        let host = vmm.faultChain(0x0D)[0].address
        var r = ServiceRegisters(eax: 0x0D, esi: 0x0010_0200)
        _ = try vmm.callService(vmmcallOperand: 0x0001_0081, registers: &r)
        #expect(r.esi == host.rawValue)

        // First: the guest handler passes on, the host one processes.
        var frame = sampleFrame()
        var out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        let call = try #require(callout.calls.first)
        #expect(call.handler == FaultHandlerAddress(0x0010_0200) && call.previous == host)
        #expect(call.registers.ebx == vmm.currentVM && call.registers.ebp == frameAddress)
        #expect(call.registers.eflags & EFlags.if == 0)
        #expect(out.trace.visits.map(\.name) == ["guest_gp", "host"])
        #expect(out.trace.visits.map(\.kind) == ["guest", "host"])

        // Then it processes, skipping the faulting instruction.
        callout.behaviour = { call, f in
            var regs = call.registers
            regs.eax = 0x99
            f.eip += 1
            return GuestFaultHandlerReturn(disposition: .processed, registers: regs)
        }
        out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                    entryRegisters: sampleEntryRegisters())
        #expect(out.result == .processed(by: FaultHandlerAddress(0x0010_0200), name: "guest_gp"))
        #expect(frame.eip == 0x0010_0006)
        #expect(out.trace.visits.first?.registerChanges == [ValueChange(name: "EAX", old: 0xA, new: 0x99)])

        // Without a callout: a typed error, no crash.
        vmm.guestCallout = nil
        #expect(throws: FaultDispatchError.self) {
            _ = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                      entryRegisters: sampleEntryRegisters())
        }
    }

    @Test func fatalErrorHandlerFromAHandlerEndsDispatch() throws {
        let vmm = VirtualMachineManager()
        let memory = DictionaryMemory()
        memory.put("cannot continue", at: 0x0010_0800)
        vmm.guestMemory = memory
        var afterCalled = false
        try vmm.hookVMMFault(0x0D, name: "after") { _, _, _ in afterCalled = true; return .processed }
        try vmm.hookVMMFault(0x0D, name: "DIE") { _, _, ctx in
            var r = ServiceRegisters(eax: 0, esi: 0x0010_0800)
            _ = try? ctx.vmm.callService(vmmcallOperand: 0x0001_00BE, registers: &r)
            return .passedOn
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        #expect(out.result == .terminated(FatalErrorReport(message: "cannot continue", messageAddress: 0x0010_0800,
                                                           flags: 0)))
        #expect(!afterCalled)
        #expect(vmm.diagnostics.isEmpty)  // Fatal_Error_Handler is asynchronous
    }

    @Test func traceIsCodableAndReadable() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        try vmm.hookVMMFault(0x0D, name: "BAD") { r, f, _ in r.ebp = 0; f.eip += 2; return .processed }
        let bad = vmm.faultChain(0x0D)[0].address
        #expect(bad == FaultHandlerAddress(MemoryMap.hostAreaBase + 79 * 16))  // after the VMM's 79 handlers
        var frame = sampleFrame()
        let out = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                        entryRegisters: sampleEntryRegisters())
        let data = try JSONEncoder().encode(out.trace)
        let back = try JSONDecoder().decode(FaultDispatchTrace.self, from: data)
        #expect(back == out.trace)
        let result = try JSONDecoder().decode(FaultDispatchResult.self, from: JSONEncoder().encode(out.result))
        #expect(result == out.result)
        let text = out.trace.description
        #expect(text.hasPrefix("fault 0Dh at 0028:00100005 error 0000 frame 0007FF00"))
        #expect(text.contains("1. \(bad) BAD [post-critical-init, host] processed: EBP 0007FF00 -> 00000000, Client_EIP 00100005 -> 00100007"))
        #expect(text.contains("! BAD at \(bad) changed EBP 0007FF00 -> 00000000 while processing the fault"))
        #expect(text.contains("=> processed by BAD at \(bad)"))
    }
}
