extension Machine {
    /// Carries out the runtime call in EAX (port F0h, see `RuntimeCall`).
    func handleRuntimeCall() {
        do {
            var s = try backend.readState()
            guard s.cpl == 0 else {
                finish(.invalidResume, "runtime call from ring \(s.cpl)")
                return
            }
            switch RuntimeCall(rawValue: s.eax) {
            case .enterRing3:
                let loader = SegmentLoader(memory: memory, gdtr: s.gdtr)
                do {
                    s.cs = try loader.loadCode(Selectors.ring3Code)
                    s.ss = try loader.loadStack(Selectors.ring3Data, cpl: 3)
                    let d = try loader.loadData(Selectors.ring3Data, cpl: 3, name: "DS")
                    s.ds = d; s.es = d; s.fs = d; s.gs = d
                } catch {
                    finish(.invalidResume, "entering ring 3: \(error)")
                    return
                }
                s.eip = s.ecx
                s.esp = s.edx
                s.eflags = (s.esi & FrameCodec.resumableFlags) | EFlags.reserved1
                try backend.writeState(s)
            case .checkpoint:
                report.checkpoints.append(Checkpoint(tag: s.ecx, value: s.ebx))
            case .enterV86:
                let cs = SegmentRegister.v86(selector: UInt16(truncatingIfNeeded: s.edi))
                s.cs = cs; s.ds = cs; s.es = cs; s.fs = cs; s.gs = cs
                s.ss = .v86(selector: UInt16(truncatingIfNeeded: s.edi >> 16))
                s.eip = s.ecx & 0xFFFF
                s.esp = s.edx & 0xFFFF
                s.eflags = (s.esi & FrameCodec.resumableFlags) | EFlags.vm | EFlags.reserved1
                try backend.writeState(s)
            case .raiseNMI:
                try raiseNMI()
            case .raiseIRQ:
                guard let pic = interruptController else {
                    finish(.invalidResume, "IRQ \(s.ecx) raised, but no virtual PIC is attached")
                    return
                }
                if let why = pic.raise(irq: UInt8(truncatingIfNeeded: min(s.ecx, 255))) {
                    finish(.invalidResume, "IRQ \(s.ecx) refused by the virtual PIC: \(why)")
                }
            case nil:
                finish(.invalidResume, "unknown runtime call \(hex(s.eax)) at \(hex(s.eip))")
            }
        } catch {
            finish(.backendError, error.description)
        }
    }

    /// Delivers a non-maskable interrupt to the guest through the backend (`KVM_NMI` on KVM; the
    /// interpreter delivers it through IDT vector 02h).
    public func raiseNMI() throws(HarnessError) {
        try backend.injectNMI()
    }

    /// Delivers the virtual PIC's pending request through the IDT when the guest accepts
    /// interrupts (IF set, no interrupt shadow), as the CPU takes an external interrupt. The stub
    /// for 50h+IRQ then exits to the host like any fault.
    ///
    /// A request the guest cannot take yet (IF clear, or the STI shadow) asks the backend for an
    /// interrupt window, so it is delivered at the first boundary where it can be: just after the
    /// instruction that follows STI.
    func deliverPendingInterrupt() {
        guard finished == nil, let vector = interruptController?.pendingVector else {
            if interruptWindowRequested { setInterruptWindow(false) }
            return
        }
        do {
            switch try backend.deliverExternalInterrupt(vector: vector) {
            case .delivered:
                // Another request may wait behind this one: the window stays open for it.
                setInterruptWindow(interruptController?.pendingVector != nil)
            case .notAccepted:
                setInterruptWindow(true)
            case let .shutdown(reason):
                finish(.shutdown, reason)
            }
        } catch {
            finish(.backendError, "delivering vector \(hex(vector, width: 2)): \(error)")
        }
    }

    /// Asks the backend for (or stops asking for) an interrupt window; a backend without one
    /// delivers at its next exit instead, as before.
    private func setInterruptWindow(_ wanted: Bool) {
        guard wanted != interruptWindowRequested else { return }
        do {
            try backend.requestInterruptWindow(wanted)
            interruptWindowRequested = wanted
        } catch {
            report.notes.append("interrupt window: \(error)")
        }
    }
}
