import Foundation

extension Machine {
    /// Calls guest code at `entry` as `call entry` would, from the host: `state` with the return
    /// address `MemoryMap.guestCallReturn` pushed on its stack, run by the one run loop until the
    /// procedure returns or reaches `previous` (a guest address, caught with a breakpoint, or a
    /// host-handler address, which exits by itself). VMMcalls made meanwhile are served; a fault
    /// or HLT inside the procedure, or the timeout, is an error. The CPU state from before the call
    /// is restored afterwards; the state at the end of the procedure is returned (with ESP as before
    /// the return address was pushed, when it reached `previous`). Calls nest up to
    /// `Machine.maximumGuestCallDepth`; a nested call gives the outer one its breakpoint back.
    public func callGuest(_ entry: UInt32, state: CPUState, previous: UInt32?, purpose makePurpose: @autoclosure () -> String)
        throws(HarnessError) -> (end: GuestCallEnd, state: CPUState)
    {
        let end = try callGuestLeavingState(entry, state: state, previous: previous, purpose: makePurpose())
        return (end, procedureEndState)
    }

    /// `callGuest` for the guest-handler path: the state at the procedure's end is left in
    /// `procedureEndState` instead of being returned (a CPU state is copied at every return).
    func callGuestLeavingState(_ entry: UInt32, state: CPUState, previous: UInt32?,
                               purpose makePurpose: @autoclosure () -> String) throws(HarnessError) -> GuestCallEnd
    {
        var purpose: String { makePurpose() }
        if finished?.reason == .timeout { throw .guestProtocol("\(purpose): the run timed out") }
        guard guestCallDepth < Machine.maximumGuestCallDepth else {
            throw .guestProtocol("\(purpose): guest calls nested too deeply")
        }
        startClock()
        let saved = try backend.readState()
        var s = state
        s.esp &-= 4
        do {
            guard let at = PageWalker.contiguous(s.esp &+ s.ss.base, count: 4, state: s, memory: memory) else {
                throw MemoryAccessError(address: UInt64(s.esp), length: 4, isWrite: true)
            }
            try memory.write32(at, MemoryMap.guestCallReturn)
        } catch {
            throw .guestProtocol("\(purpose): the stack at \(hex(s.esp)) is outside guest memory")
        }
        s.eip = entry
        try backend.writeState(s)
        // The breakpoint that catches the jump to `previous` (a guest address; a host slot exits
        // by itself). Changed only when it differs from the armed one and cleared lazily, before
        // the guest runs outside a call (`runOnce`): walking a chain of guest handlers costs one
        // KVM_SET_GUEST_DEBUG per handler instead of two.
        let outerBreakpoint = armedBreakpoint
        try arm(previous.flatMap { VMMHostArea.isHandlerSlot($0) ? nil : $0 })
        guestCallDepth += 1
        // After the run (the VMM's shutdown messages) the run's own watchdog is gone: bound the
        // call by a deadline of its own, as long as the run's timeout, and a watchdog that kicks.
        let outerDeadline = callDeadline
        var afterRun: Watchdog?
        if finished != nil, outerDeadline == nil {
            let ns = options.timeoutNanoseconds ?? 10_000_000_000
            callDeadline = DispatchTime.now().uptimeNanoseconds &+ ns
            let w = Watchdog()
            let kicker = backend.kicker
            w.arm(afterNanoseconds: ns) { [weak kicker] in kicker?.kick() }
            afterRun = w
        }
        var restoreError: HarnessError?
        defer {
            afterRun?.cancel()
            callDeadline = outerDeadline
            guestCallDepth -= 1
        }
        let result: GuestCallEnd?
        do {
            result = try runToProcedureEnd(previous: previous, purpose: purpose)
        } catch {
            // The outer state comes back even when the call failed; the call's error is what the
            // caller gets, and a failure to restore is noted in the report.
            do {
                if guestCallDepth > 1 { try arm(outerBreakpoint) }
                try backend.writeState(saved)
            } catch let restore {
                report.notes.append("restoring the state after \(purpose) failed: \(restore)")
            }
            throw error
        }
        // The caller's registers come back; the system state stays as the procedure left it (a
        // handler's CLTS, LIDT or MOV CR3 persists, as under the real VMM, whose IRET restores
        // only what the frame holds).
        var back = saved
        back.takeSystemState(of: procedureEndState)
        do {
            if guestCallDepth > 1 { try arm(outerBreakpoint) }
            try backend.writeState(back)
        } catch {
            restoreError = error
        }
        systemStateGeneration &+= 1
        if let restoreError { throw restoreError }
        guard let result else { throw .guestProtocol("\(purpose): the run ended") }
        return result
    }
}
