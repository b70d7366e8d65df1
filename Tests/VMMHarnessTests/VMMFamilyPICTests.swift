import Testing
@testable import VMMHarness

/// The minimal virtual PIC: IRQ n on vector 50h + n.
@Suite struct VMMFamilyPICTests {
    private func deliver(_ vmm: VirtualMachineManager, _ irq: UInt8? = nil) throws -> IRQDispatchOutcome {
        var frame = sampleFrame()
        return try vmm.dispatchIRQ(irq, frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
    }

    @Test func virtualizeRefusesDuplicatesAndOutOfRange() throws {
        let vmm = VirtualMachineManager()
        let timer = try vmm.virtualizeIRQ(irq: 0, name: "VTD", handler: process)
        #expect(timer.vector == 0x50 && timer.handle == 0x50 && timer.kind == "host")
        #expect(vmm.isHostHandler(timer.handler))
        #expect(throws: VirtualPICError.alreadyVirtualized(irq: 0, by: "VTD")) {
            try vmm.virtualizeIRQ(irq: 0, name: "OTHER", handler: process)
        }
        #expect(throws: VirtualPICError.irqOutOfRange(16)) { try vmm.virtualizeIRQ(irq: 16, name: "X", handler: process) }
        #expect(throws: VirtualPICError.nullHandler) { try vmm.virtualizeIRQ(irq: 5, handlerAt: FaultHandlerAddress(0)) }
        let guest = try vmm.virtualizeIRQ(irq: 15, name: "GIDE", handlerAt: FaultHandlerAddress(0x0010_0C00))
        #expect(guest.vector == 0x5F && guest.kind == "guest")
        #expect(vmm.virtualizedIRQs.map(\.irq) == [0, 15])
        try vmm.forceDefaultBehavior(irq: 0)
        #expect(throws: VirtualPICError.notVirtualized(0)) { try vmm.forceDefaultBehavior(irq: 0) }
        try vmm.virtualizeIRQ(irq: 0, name: "NEW", handler: process)
        #expect(VirtualPIC.vector(forIRQ: 16) == nil && VirtualPIC.irq(forVector: 0x4F) == nil)
        #expect(VirtualPIC.irq(forVector: 0x5F) == 15 && VirtualPIC.irq(forVector: 0x60) == nil)
    }

    /// 50h–5Fh belong to the PIC: the three Hook_*_Fault services refuse them, the PIC takes them.
    @Test func picVectorsAreRefusedByTheFaultHooksAndTakenByThePIC() throws {
        let vmm = VirtualMachineManager()
        for irq in UInt8(0)..<16 {
            let vector = try #require(VirtualPIC.vector(forIRQ: irq))
            for chain in FaultChainKind.allCases {
                #expect(throws: FaultHookError.invalidFaultNumber(UInt32(vector))) {
                    try vmm.hookFault(chain, UInt32(vector), name: "X", handler: process)
                }
                var r = ServiceRegisters(eax: UInt32(vector), esi: 0x0010_0040)
                _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.hookFault(chain)), registers: &r)
                #expect(r.carry)
            }
        }
        var seen: (vector: UInt8, eax: UInt32)?
        try vmm.virtualizeIRQ(irq: 6, name: "VFD") { r, _, ctx in seen = (ctx.vector, r.eax); return .processed }
        try vmm.raiseIRQ(6)
        let out = try deliver(vmm)
        #expect(seen?.vector == 0x56 && seen?.eax == 0x56)
        #expect(out.trace.description.hasPrefix("IRQ 6 (vector 56h)"))
    }

    @Test func raiseThenDispatchReachesTheHandler() throws {
        let vmm = VirtualMachineManager()
        try vmm.boot()
        var calls = 0
        var entry: HandlerRegisters?
        let v = try vmm.virtualizeIRQ(irq: 1, name: "VKD") { r, f, ctx in
            calls += 1
            entry = r
            #expect(!ctx.vmm.interruptsEnabled && ctx.vmm.reenterCount == 1)
            try? ctx.vmm.raiseIRQ(12)  // VPICD services are asynchronous: no report
            r.ecx = 0x1234
            f.eax = 0x99
            return .processed
        }
        #expect(vmm.pendingIRQs.isEmpty && vmm.nextPendingIRQ == nil)
        try vmm.raiseIRQ(1)
        try vmm.raiseIRQ(1)  // edge: once
        #expect(vmm.isIRQPending(1) && vmm.pendingIRQs == [1])
        let out = try deliver(vmm)
        #expect(calls == 1)
        #expect(out.result == .processed(irq: 1, by: v.handler, name: "VKD"))
        #expect(entry?.eax == v.handle && entry?.ebx == vmm.currentVM && entry?.ebp == frameAddress)
        #expect(entry.map { $0.eflags & EFlags.if == 0 } == true)
        #expect(out.registers.ecx == 0x1234)
        #expect(out.trace.visit?.frameChanges.map(\.name) == ["Client_EAX"])
        #expect(out.trace.visit?.violations.isEmpty == true)
        #expect(!vmm.isIRQPending(1) && vmm.pendingIRQs == [12])
        #expect(vmm.interruptsEnabled && vmm.reenterCount == 0)
        #expect(vmm.diagnostics.isEmpty)
        #expect(throws: VirtualPICError.irqOutOfRange(16)) { try vmm.raiseIRQ(16) }
    }

    @Test func pendingIRQsComeOutInPriorityOrder() throws {
        let vmm = VirtualMachineManager()
        for n: UInt8 in [7, 3, 14, 8, 1] { try vmm.raiseIRQ(n) }
        #expect(vmm.pendingIRQs == [1, 8, 14, 3, 7])
        try vmm.clearIRQ(14)
        #expect(vmm.pendingIRQs == [1, 8, 3, 7])
        var delivered: [UInt8] = []
        while vmm.nextPendingIRQ != nil {
            let out = try deliver(vmm)
            if case let .unvirtualized(n) = out.result { delivered.append(n) }
        }
        #expect(delivered == [1, 8, 3, 7])
    }

    @Test func unvirtualizedAndSpuriousIRQsAreReported() throws {
        let vmm = VirtualMachineManager()
        try vmm.raiseIRQ(9)
        let out = try deliver(vmm)
        #expect(out.result == .unvirtualized(irq: 9))
        #expect(out.trace.outcome == "unhandled IRQ 9 (vector 59h): no device virtualized it")
        #expect(!vmm.isIRQPending(9))
        let none = try deliver(vmm)
        #expect(none.result == .spurious(irq: nil))
        let named = try deliver(vmm, 4)
        #expect(named.result == .spurious(irq: 4))
        #expect(vmm.diagnostics.count == 3)
        #expect(throws: IRQDispatchError.irqOutOfRange(20)) { try deliver(vmm, 20) }
    }

    @Test func guestHandlerThroughTheCalloutCarrySetMeansNotProcessed() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        let v = try vmm.virtualizeIRQ(irq: 14, name: "GIDE", handlerAt: FaultHandlerAddress(0x0010_0C00))
        callout.behaviour = { call, _ in
            var r = call.registers
            r.eflags |= EFlags.cf
            return GuestFaultHandlerReturn(disposition: .processed, registers: r)
        }
        try vmm.raiseIRQ(14)
        let out = try deliver(vmm)
        #expect(out.result == .notProcessed(irq: 14, by: v.handler, name: "GIDE"))
        #expect(callout.calls.map(\.role) == [.irq(14)] && callout.calls[0].previous == nil)
        #expect(callout.calls[0].registers.eax == 0x5E)
        #expect(out.trace.visit?.violations.isEmpty == true)  // CF may change
        #expect(vmm.diagnostics.count == 1)
        // Without a callout: typed error, no crash.
        vmm.guestCallout = nil
        try vmm.raiseIRQ(14)
        #expect(throws: IRQDispatchError.self) { try deliver(vmm) }
    }

    @Test func irqsAreNotDeliveredInsideAFaultHandler() throws {
        let vmm = VirtualMachineManager()
        try vmm.virtualizeIRQ(irq: 0, name: "VTD", handler: process)
        try vmm.raiseIRQ(0)
        var error: IRQDispatchError?
        try vmm.hookVMMFault(0x0D, name: "GP") { _, _, ctx in
            var f = sampleFrame()
            do { _ = try ctx.vmm.dispatchIRQ(frame: &f, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters()) }
            catch let e as IRQDispatchError { error = e } catch { Issue.record("\(error)") }
            return .processed
        }
        var frame = sampleFrame()
        _ = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                  entryRegisters: sampleEntryRegisters())
        #expect(error == .reentrantDispatch(irq: nil, activeVector: 0x0D))
        #expect(vmm.isIRQPending(0))
    }
}
