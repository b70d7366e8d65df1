import Testing
@testable import VMMHarness

/// The one handler invoker keeps what each of the three former invokers (fault chains, NMI
/// handlers and events, IRQ handlers) did differently; and the hook store under it.
@Suite struct VMMHandlerInvokerTests {
    @Test func aSwiftNMIHandlerThatReturnsEndsTheChainEarly() throws {
        let vmm = VirtualMachineManager()
        var ran: [String] = []
        try vmm.installNMIHandler(name: "LOWER") { _, _, _ in ran.append("LOWER"); return .passedOn }
        let lower = vmm.getNMIHandlerAddr()
        try vmm.installNMIHandler(name: "RETURNS") { r, _, ctx in
            ran.append("RETURNS")
            #expect(ctx.vector == 0x02 && ctx.previous == lower)
            r.eax = 0x42  // allowed: it "processed"
            return .processed
        }
        let returns = vmm.getNMIHandlerAddr()
        var eventEntry: HandlerRegisters?
        try vmm.hookNMIEvent(name: "EV") { r, _, _ in ran.append("EV"); eventEntry = r }
        var frame = sampleFrame()
        let out = try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
        #expect(ran == ["RETURNS", "EV"])
        #expect(out.endedEarlyBy == returns && out.termination == nil)
        #expect(out.registers.eax == 0x42)
        // The events get fresh entry registers, not what the chain left.
        #expect(eventEntry?.eax == sampleEntryRegisters().eax && eventEntry?.ebx == vmm.currentVM)
        #expect(out.trace.handlers.map(\.name) == ["RETURNS"])
        #expect(out.trace.handlers.map(\.disposition) == [.processed])
        #expect(out.trace.handlers[0].violations.isEmpty)
        #expect(out.trace.events.map(\.disposition) == [.processed])
        #expect(vmm.diagnostics == [.nmiChainEndedEarly(handler: "RETURNS", address: returns)])
        #expect(out.trace.outcome == "chain ended early: RETURNS at \(returns) returned instead of jumping to its "
            + "previous handler; 1 event procedure ran")
    }

    @Test func irqHandlersAnswerWithTheCarryFlagAndAreHeldToTheProcessingRules() throws {
        let vmm = VirtualMachineManager()
        // A Swift handler answering .passedOn is "CF set": not processed, reported; EAX may change
        // whatever it answers, EBP may not (judged as processing).
        let v = try vmm.virtualizeIRQ(irq: 3, name: "COM2") { r, _, ctx in
            #expect(ctx.vector == 0x53 && ctx.previous == nil && ctx.address == ctx.vmm.virtualizedIRQs[0].handler)
            r.eax = 0
            r.ebp = 1
            return .passedOn
        }
        try vmm.raiseIRQ(3)
        var frame = sampleFrame()
        let out = try vmm.dispatchIRQ(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
        #expect(out.result == .notProcessed(irq: 3, by: v.handler, name: "COM2"))
        #expect(out.registers.eax == 0 && out.registers.ebp == 1)
        #expect(out.trace.visit?.disposition == .passedOn)
        #expect(out.trace.visit?.violations.map(\.register) == ["EBP"])
        #expect(out.trace.visit?.violations.map(\.disposition) == [.processed])
        let text = "IRQ 3 (vector 53h) not processed by COM2 at \(v.handler) (CF set)"
        #expect(vmm.diagnostics.last == .unhandledIRQ(text) && out.trace.outcome == text)

        // Guest code: the carry flag decides, not how the callout says it ended.
        let callout = MockCallout()
        vmm.guestCallout = callout
        let g = try vmm.virtualizeIRQ(irq: 7, name: "LPT", handlerAt: FaultHandlerAddress(0x0010_0D00))
        callout.behaviour = { call, _ in
            var r = call.registers
            r.eflags &= ~EFlags.cf
            return GuestFaultHandlerReturn(disposition: .passedOn, registers: r)
        }
        try vmm.raiseIRQ(7)
        let guest = try vmm.dispatchIRQ(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
        #expect(guest.result == .processed(irq: 7, by: g.handler, name: "LPT"))
        #expect(callout.calls.map(\.role) == [.irq(7)] && callout.calls[0].registers.eax == 0x57)
    }

    @Test func nmiEventsAlwaysReturnAndAreHeldToTheProcessingRules() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        try vmm.hookNMIEvent(procedureAt: FaultHandlerAddress(0x0010_0700))
        callout.behaviour = { call, _ in
            var r = call.registers
            r.eax = 1      // allowed
            r.esp &-= 4    // not
            return GuestFaultHandlerReturn(disposition: .passedOn, registers: r)
        }
        var frame = sampleFrame()
        let out = try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
        #expect(callout.calls.map(\.role) == [.nmiEvent] && callout.calls[0].previous == nil)
        #expect(out.trace.events.map(\.disposition) == [.processed])
        #expect(out.trace.events[0].violations.map(\.register) == ["ESP"])
        #expect(out.trace.events[0].violations.map(\.disposition) == [.processed])
        #expect(out.trace.handlers.map(\.name) == ["VMM"] && out.endedEarlyBy == nil)
    }

    /// Fault and NMI handlers that pass on must keep every register; the same rule, one check.
    @Test func passingOnKeepsEveryRegisterInFaultAndNMIChains() throws {
        let vmm = VirtualMachineManager()
        let leaky: FaultProc = { r, _, _ in r.eax = 0xBAD; return .passedOn }
        try vmm.hookVMMFault(0x0D, name: "LEAKY", handler: leaky)
        try vmm.installNMIHandler(name: "LEAKY", handler: leaky)
        var frame = sampleFrame()
        let fault = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                          entryRegisters: sampleEntryRegisters())
        let nmi = try vmm.dispatchNMI(frame: &frame, frameAddress: frameAddress, entryRegisters: sampleEntryRegisters())
        let a = try #require(fault.trace.visits.first?.violations.first)
        let b = try #require(nmi.trace.handlers.first?.violations.first)
        #expect(a.register == "EAX" && b.register == "EAX")
        #expect(a.disposition == .passedOn && b.disposition == .passedOn)
        // The NMI chain's default handler got the registers as the leaky handler left them.
        #expect(nmi.registers.eax == 0xBAD)
    }

    @Test func hookStoreKeepsOneRecordPerHookedHandler() {
        var store = HookStore()
        // Record 0: the default NMI handler, the NMI chain's end.
        #expect(store.records.count == 1 && store.nmiHead == 0)
        #expect(store.records[0].address == VMMHostArea.defaultNMIHandler && store.records[0].role == .nmiHandler)
        let a = FaultHandlerAddress(0x0010_0A00), b = FaultHandlerAddress(0x0010_0B00), c = FaultHandlerAddress(0x0010_0C00)
        #expect(store.hookFault(.pm, vector: 0x0E, address: a, name: "A", kind: .guest(a), tier: .criticalInit, owner: 0) == nil)
        #expect(store.hookFault(.pm, vector: 0x0E, address: b, name: "B", kind: .guest(b), tier: .criticalInit, owner: nil) == a)
        #expect(store.hookFault(.pm, vector: 0x0E, address: c, name: "C", kind: .guest(c), tier: .criticalInit, owner: nil) == b)
        #expect(store.head(.vmm, 0x0E) == nil && store.head(.pm, 0x0D) == nil)
        let chain = store.chain(from: store.head(.pm, 0x0E))
        #expect(chain.map { store.records[$0].name } == ["C", "B", "A"])
        // Unlinking B relinks C to A and tells the guest about C.
        let relink = store.unlink(chain[1])
        #expect(relink?.handler == c && relink?.newPrevious == a && relink?.chain == .pm && relink?.vector == 0x0E)
        #expect(store.chain(from: store.head(.pm, 0x0E)).map { store.records[$0].name } == ["C", "A"])
        #expect(store.findFault(.pm, vector: 0x0E, address: b) == nil)
        #expect(store.findFault(.pm, vector: 0x0E, address: a) == chain[2])
        // Unlinking the head moves the head; nothing to tell.
        #expect(store.unlink(chain[0]) == nil)
        #expect(store.head(.pm, 0x0E) == chain[2])

        // NMI handlers, events and IRQ handlers are records too.
        store.setNMIHandler(a, name: "N", kind: .guest(a), tier: .postCriticalInit)
        #expect(store.records[store.nmiHead].previousAddress == VMMHostArea.defaultNMIHandler)
        #expect(store.chain(from: store.nmiHead).map { store.records[$0].name } == ["N", "VMM"])
        store.addNMIEvent(b, name: "E", kind: .guest(b))
        let irq = store.virtualizeIRQ(5, address: c, name: "I", kind: .guest(c))
        #expect(store.records[irq].role == .irq(5) && store.records[irq].vector == 0x55)
        #expect(store.nmiEvents.map { store.records[$0].role } == [.nmiEvent])
        #expect(store.irqHandler(5) == irq && store.virtualizedIRQs == [irq])
        #expect(store.forceDefaultBehavior(5) && !store.forceDefaultBehavior(5))
        #expect(store.irqHandler(5) == nil && !store.records[irq].active)
        #expect(store.irqHandler(200) == nil)
    }

    @Test func hostSlotsAreHandedOutInOrderAndNeverReused() throws {
        var store = HookStore()
        let first = store.allocateSlot(name: "A", kind: .vmmDefault)
        let second = store.allocateSlot(name: "B", kind: .vmmDefault)
        #expect(first == FaultHandlerAddress(VMMHostArea.handlerBase))
        #expect(second == FaultHandlerAddress(VMMHostArea.handlerBase + VMMHostArea.slotSize))
        #expect(store.slot(at: FaultHandlerAddress(VMMHostArea.handlerBase + VMMHostArea.slotSize))?.name == "B")
        #expect(store.slot(at: FaultHandlerAddress(VMMHostArea.handlerBase + 1)) == nil)  // not a slot start
        #expect(store.slot(at: VMMHostArea.defaultNMIHandler)?.name == "VMM")
        let pm = try #require(VMMHostArea.ownHandlerAddress(.pm, vector: 0x0D))
        #expect(store.slot(at: pm) == nil)  // reserved, not in use before the VMM installs its own handlers
        store.markOwnHandlersInstalled()
        #expect(store.slot(at: pm)?.name == "VMM" && store.newHookTier == .postCriticalInit)
        for _ in 2..<VMMHostArea.allocatableSlotCount { _ = store.allocateSlot(name: "x", kind: .vmmDefault) }
        #expect(store.allocateSlot(name: "one too many", kind: .vmmDefault) == nil)
    }
}
