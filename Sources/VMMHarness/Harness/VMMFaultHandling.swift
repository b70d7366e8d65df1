/// Connects the machine to the VMM: every fault the guest raises goes through
/// `VirtualMachineManager.dispatchFault`, and the frame the handlers leave is what the guest
/// resumes with.
///
/// It also serves `VMMcall` (INT 20h from ring 0) with the VMM's service table, and runs guest
/// fault handlers (`GuestFaultCallout`) and guest devices' control procedures in the guest.
public final class VMMFaultHandling: FaultHandling, GuestFaultCallout, InterruptController {
    public let vmm: VirtualMachineManager
    /// The machine whose guest runs guest handlers. Set by `attach(to:)`.
    public private(set) weak var machine: Machine?

    /// What the VMM holds (weakly) to run guest handlers. A separate object: a weak reference to
    /// this one would give it a side table, and every retain of it — twice per fault, by the
    /// machine — would take the runtime's slow path.
    let calloutPort: GuestCalloutPort

    public init(vmm: VirtualMachineManager) {
        self.vmm = vmm
        self.calloutPort = GuestCalloutPort(vmm: vmm)
    }

    /// Connects the VMM to `machine`: faults, VMMcalls and guest handlers go through it, and the
    /// run's report gets the VMM's summary.
    public func attach(to machine: Machine) {
        self.machine = machine
        calloutPort.machine = machine
        vmm.guestMemory = machine.memory
        vmm.guestCallout = calloutPort
        vmm.systemRegisterPort = calloutPort
        machine.faultHandling = self
        machine.interruptController = self
        machine.reportContributor = { [weak self] report in
            if let self { report.vmm = self.summary }
        }
    }

    // MARK: InterruptController (the virtual PIC)

    public func raise(irq: UInt8) -> String? {
        do { try vmm.raiseIRQ(irq) } catch { return error.description }
        return nil
    }

    public var pendingVector: UInt8? { vmm.nextPendingIRQ.map { VirtualPIC.baseVector &+ $0 } }

    public func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        if event.vector == 0x20 && event.ring == 0 && frame.eflags & EFlags.vm == 0 {
            return vmmcall(event, frame: &frame, details: &details)
        }
        // The registers of `call [FaultProc]`: the interrupted code's general registers (the stub's
        // PUSHAD left them unchanged), the stub's ring-0 segments and stack; the VMM sets EBX, EBP
        // and clears IF.
        var entry = HandlerRegisters(event.stubState)
        entry.eax = frame.eax; entry.ebx = frame.ebx; entry.ecx = frame.ecx; entry.edx = frame.edx
        entry.esi = frame.esi; entry.edi = frame.edi
        if event.vector == 0x02 { return nmi(event, frame: &frame, entry: entry, details: &details) }
        if let irq = VirtualPIC.irq(forVector: event.vector) {
            return irqDelivery(irq, event, frame: &frame, entry: entry, details: &details)
        }
        // The mode the fault came from picks the chain: V86 -> Hook_V86_Fault's, ring 3 (a
        // protected-mode application) -> Hook_PM_Fault's, ring 0 -> Hook_VMM_Fault's.
        let chain: FaultChainKind = frame.eflags & EFlags.vm != 0 ? .v86 : event.ring != 0 ? .pm : .vmm
        vmm.recordsTraces = details.wanted
        do {
            // A fault the report will not list gets no trace at all (see `walkChain`).
            var trace: FaultDispatchTrace? = details.wanted
                ? FaultDispatchTrace(vector: event.vector, frameAddress: event.frameAddress, entryFrame: FrameSnapshot(frame),
                                     visits: [], outcome: "", chain: chain)
                : nil
            let (result, _) = try vmm.walkChain(chain, vector: event.vector, frame: &frame, frameAddress: event.frameAddress,
                                                entryRegisters: entry, trace: &trace)
            if let trace {
                details.dispatch = trace
                details.trace = trace.description.split(separator: "\n").map(String.init)
            }
            switch result {
            case let .processed(_, name):
                return .resume(handledBy: name)
            case let .unhandled(report):
                return .unhandled(report: report.message)
            case let .terminated(report):
                return .stop(reason: .fatalError, message: report.description)
            }
        } catch {
            switch error {
            case let .registerViolation(_, trace), let .noGuestCallout(_, trace), let .guestCallout(_, _, trace),
                 let .handlerThrew(_, _, _, trace):
                details.dispatch = trace
                details.trace = trace.description.split(separator: "\n").map(String.init)
            default:
                break
            }
            return .stop(reason: .handlerError, message: error.description)
        }
    }

    // MARK: NMI and IRQ

    func nmi(_ event: FaultEvent, frame: inout ClientRegisters, entry: HandlerRegisters,
             details: inout FaultDetails) -> FaultResolution {
        do {
            let outcome = try vmm.dispatchNMI(frame: &frame, frameAddress: event.frameAddress, entryRegisters: entry)
            details.trace = outcome.trace.description.split(separator: "\n").map(String.init)
            if let t = outcome.termination { return .stop(reason: .fatalError, message: t.description) }
            return .resume(handledBy: "NMI chain")
        } catch {
            details.trace = ["NMI: \(error)"]
            return .stop(reason: .handlerError, message: "NMI: \(error)")
        }
    }

    func irqDelivery(_ irq: UInt8, _ event: FaultEvent, frame: inout ClientRegisters, entry: HandlerRegisters,
                     details: inout FaultDetails) -> FaultResolution {
        do {
            let outcome = try vmm.dispatchIRQ(irq, frame: &frame, frameAddress: event.frameAddress, entryRegisters: entry)
            details.trace = outcome.trace.description.split(separator: "\n").map(String.init)
            switch outcome.result {
            case let .processed(_, _, name): return .resume(handledBy: "IRQ \(irq): \(name)")
            case let .notProcessed(_, _, name): return .resume(handledBy: "IRQ \(irq): not processed by \(name)")
            case .unvirtualized: return .resume(handledBy: "IRQ \(irq): no device virtualized it")
            case .spurious: return .resume(handledBy: "spurious IRQ \(irq)")
            }
        } catch {
            details.trace = ["IRQ \(irq): \(error)"]
            return .stop(reason: .handlerError, message: "IRQ \(irq): \(error)")
        }
    }

    // MARK: VMMcall

    /// Serves `INT 20h` + dword from ring 0: the dword names the service (high word device,
    /// low word ordinal, bit 15 = VMMjmp). The service runs with its register contract on the
    /// frame's registers; the guest continues after the dword (VMMcall) or at the return address
    /// on its stack (VMMjmp: the service "returns" for the caller).
    func vmmcall(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        guard let machine else { return .stop(reason: .backendError, message: "VMMcall without a machine") }
        let site = frame.eip &- 2
        // Guest-linear reads through the paging state the stub exited with (no second state read).
        func readLinear32(_ linear: UInt32) -> UInt32? {
            guard let p = PageWalker.contiguous(linear, count: 4, state: event.stubState, memory: machine.memory) else {
                return nil
            }
            return try? machine.memory.read32(p)
        }
        guard let operand = readLinear32(frame.eip) else {
            return .stop(reason: .fatalError, message: "VMMcall at \(hex(site)): the service dword is outside guest memory")
        }
        let id = VMMServiceID(vmmcallOperand: operand)
        var regs = ServiceRegisters(eax: frame.eax, ebx: frame.ebx, ecx: frame.ecx, edx: frame.edx, esi: frame.esi,
                                    edi: frame.edi, ebp: frame.ebp, esp: frame.esp, eflags: frame.eflags)
        let before = regs
        // Names and the caller's symbol are only for the trace and for errors: built when needed,
        // so a VMMcall the report does not list allocates nothing.
        func name() -> String { vmm.configuration.services[id.ordinal].map(\.name) ?? "service \(hex(id.ordinal, width: 4))" }
        func caller() -> String {
            machine.image.symbolize(site).map { " <\($0.name)\($0.offset == 0 ? "" : "+\(hex($0.offset, width: 1, prefix: "0x"))")>" } ?? ""
        }
        // Name a guest handler after its symbol before the hook service records it (Hook_V86_Fault,
        // Hook_PM_Fault, Hook_VMM_Fault, Set_NMI_Handler_Addr, Hook_NMI_Event).
        let hooksAHandler: Bool
        switch id.ordinal {
        case 0x7F, 0x80, 0x81, 0x17, 0x18: hooksAHandler = id.device == VMMServiceTable.vmmDeviceID
        default: hooksAHandler = false
        }
        if hooksAHandler, !VMMHostArea.isHandlerSlot(regs.esi), vmm.guestHandlerNames[FaultHandlerAddress(regs.esi)] == nil {
            vmm.guestHandlerNames[FaultHandlerAddress(regs.esi)] = machine.image.symbolize(regs.esi).map {
                $0.offset == 0 ? $0.name : "\($0.name)+\(hex($0.offset, width: 1, prefix: "0x"))"
            } ?? "guest \(hex(regs.esi))"
        }
        let outcome: ServiceCallOutcome
        do {
            outcome = try vmm.callService(vmmcallOperand: operand, registers: &regs)
        } catch {
            details.trace = ["VMMcall at \(hex(site))\(caller()): \(error)"]
            if case .unknownService = error {
                return .stop(reason: .fatalError, message: "Invalid VxD dynamic link call at \(hex(site))\(caller()): \(error)")
            }
            // A service argument the host refused to follow (e.g. a string pointer outside guest
            // memory): the real VMM would have page-faulted in the service; the run ends, naming it.
            return .stop(reason: .fatalError, message: "VMMcall \(name()) at \(hex(site))\(caller()): \(error)")
        }
        let arithmetic = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.of
        frame.eax = regs.eax; frame.ebx = regs.ebx; frame.ecx = regs.ecx; frame.edx = regs.edx
        frame.esi = regs.esi; frame.edi = regs.edi; frame.ebp = regs.ebp
        frame.eflags = (frame.eflags & ~arithmetic) | (regs.eflags & arithmetic)
        if id.isJump {
            guard let returnAddress = readLinear32(frame.esp) else {
                return .stop(reason: .fatalError, message: "VMMjmp at \(hex(site)): no return address on the stack at \(hex(frame.esp))")
            }
            frame.eip = returnAddress
            frame.esp &+= 4
        } else {
            frame.eip &+= 4
        }
        if details.wanted {
            details.trace = ["\(id.isJump ? "VMMjmp" : "VMMcall") \(name()) at \(hex(site))\(caller()): " +
                             Self.registerDiff(before, regs)]
        }
        if case let .terminate(report) = outcome {
            return .stop(reason: .fatalError, message: report.description)
        }
        guard details.wanted else { return .resume(handledBy: id.isJump ? "VMMjmp" : "VMMcall") }
        return .resume(handledBy: "\(id.isJump ? "VMMjmp" : "VMMcall") \(name())")
    }

    static func registerDiff(_ a: ServiceRegisters, _ b: ServiceRegisters) -> String {
        let inputs = "in EAX=\(hex(a.eax, prefix: "")) EBX=\(hex(a.ebx, prefix: "")) ECX=\(hex(a.ecx, prefix: "")) ESI=\(hex(a.esi, prefix: ""))"
        var out: [String] = []
        for (n, x, y) in [("EAX", a.eax, b.eax), ("EBX", a.ebx, b.ebx), ("ECX", a.ecx, b.ecx), ("EDX", a.edx, b.edx),
                          ("ESI", a.esi, b.esi), ("EDI", a.edi, b.edi)] where x != y {
            out.append("\(n)=\(hex(y, prefix: ""))")
        }
        return inputs + " -> CF \(b.carry ? "set" : "clear")" + (out.isEmpty ? "" : ", " + out.joined(separator: " "))
    }

    // MARK: guest fault handlers

    /// Enters a guest FaultProc as the DDK says — interrupts disabled, EBX = VM handle, EBP → the
    /// frame in guest memory, `call [FaultProc]` — and watches for its near RET (processed) or
    /// its jump to the previous handler it was given (passed on).
    public func callGuestFaultHandler(_ call: GuestFaultHandlerCall, frame: inout ClientRegisters) throws(HarnessError)
        -> GuestFaultHandlerReturn
    {
        try calloutPort.callGuestFaultHandler(call, frame: &frame)
    }

    /// What the VMM did over the whole run, for the report.
    public var summary: VMMSummary {
        VMMSummary(version: String(format: "%d.%02X", vmm.configuration.version.major, vmm.configuration.version.minor),
                   boot: vmm.bootLog.map(\.description),
                   diagnostics: vmm.diagnostics.map(\.description),
                   debugLog: vmm.debugLog)
    }
}

/// The VMM's part of a run report.
public struct VMMSummary: Sendable, Codable, Equatable {
    /// Get_VMM_Version's answer, e.g. "4.0A".
    public var version: String
    /// Control messages sent, the VMM's own hooks, devices unloaded.
    public var boot: [String]
    /// What the debug VMM would have printed: register-rule violations, synchronous services
    /// called from fault handlers, bad service arguments.
    public var diagnostics: [String]
    /// Out_Debug_String / Out_Debug_Chr output.
    public var debugLog: String
}

/// Runs guest fault handlers for the VMM (`VirtualMachineManager.guestCallout`) on the machine
/// `VMMFaultHandling.attach(to:)` connected.
final class GuestCalloutPort: GuestFaultCallout, SystemRegisterPort {
    let vmm: VirtualMachineManager
    weak var machine: Machine?

    init(vmm: VirtualMachineManager) { self.vmm = vmm }

    /// Enters a guest FaultProc as the DDK says — interrupts disabled, EBX = VM handle, EBP → the
    /// frame in guest memory, `call [FaultProc]` — and watches for its near RET (processed) or
    /// its jump to the previous handler it was given (passed on).
    func callGuestFaultHandler(_ call: GuestFaultHandlerCall, frame: inout ClientRegisters) throws(HarnessError)
        -> GuestFaultHandlerReturn
    {
        guard let machine else { throw .guestProtocol("no machine to run the guest handler") }
        var s = try machine.backend.readState()
        try machine.frames.store(frame, at: call.frameAddress, pagingState: s)
        let r = call.registers
        s.eax = r.eax; s.ebx = r.ebx; s.ecx = r.ecx; s.edx = r.edx; s.esi = r.esi; s.edi = r.edi; s.ebp = r.ebp
        s.eflags = r.eflags & ~EFlags.if
        // The handler's stack lies below the frame and the segment slots the DDK puts under EBP.
        let callSite = call.frameAddress &- UInt32(ClientFrameLayout.bytesBelowFrame)
        s.esp = callSite
        // The name is only for error messages: built only when one is.
        let names = vmm.guestHandlerNames
        let end = try machine.callGuestLeavingState(call.handler.rawValue, state: s, previous: call.previous?.rawValue,
                                                    purpose: "fault handler \(names[call.handler] ?? "guest handler \(call.handler)")")
        let st = machine.procedureEndState
        // The handler may have changed the paging state; the frame is found through the one it left.
        frame = try machine.frames.load(at: call.frameAddress, template: frame, pagingState: st)
        var out = HandlerRegisters(st)
        // Report ESP relative to what the VMM handed over, so the register rules compare like with like.
        out.esp = r.esp &+ (st.esp &- callSite)
        return GuestFaultHandlerReturn(disposition: end == .returned ? .processed : .passedOn, registers: out)
    }

    /// Runs a guest device's control procedure (or any guest procedure outside a fault) on the
    /// current stack through the machine's run loop.
    func callGuestProcedure(_ entry: UInt32, eax: UInt32, ebx: UInt32, purpose: String) throws(HarnessError)
        -> HandlerRegisters
    {
        guard let machine else { throw .guestProtocol("no machine to run \(purpose)") }
        var s = try machine.backend.readState()
        s.eax = eax
        s.ebx = ebx
        s.ecx = 0; s.edx = 0; s.esi = 0; s.edi = 0
        s.eflags = (s.eflags & ~(EFlags.if | EFlags.cf)) | EFlags.reserved1
        let (_, end) = try machine.callGuest(entry, state: s, previous: nil, purpose: purpose)
        return HandlerRegisters(end)
    }

    /// Ends the run as a handler error (during boot or shutdown), or notes the failure.
    func guestProcedureFailed(_ message: String) {
        machine?.noteGuestCallFailure(message)
    }

    func readSystemRegisters() throws(HarnessError) -> SystemRegisters {
        guard let machine else { throw .guestProtocol("no machine to read system registers from") }
        return SystemRegisters(try machine.backend.readState())
    }

    /// Writes them into the vCPU; the fault being dispatched resumes with them.
    func writeSystemRegisters(_ registers: SystemRegisters) throws(HarnessError) {
        guard let machine else { throw .guestProtocol("no machine to write system registers to") }
        try machine.backend.writeState(registers.applied(to: try machine.backend.readState()))
        machine.noteSystemStateChanged()
    }
}
