/// The system registers a fault handler may change and that stay as it leaves them (the VMM's
/// return to the faulting code restores only what the frame holds): CR0, CR2, CR3, CR4, GDTR and
/// IDTR. Ring-0 guest handlers change them with their own instructions (CLTS, MOV CR3, LIDT);
/// Swift handlers through `VirtualMachineManager.readSystemRegisters` / `writeSystemRegisters`.
public struct SystemRegisters: Equatable, Sendable {
    public var cr0: UInt32
    public var cr2: UInt32
    public var cr3: UInt32
    public var cr4: UInt32
    public var gdtr: TableRegister
    public var idtr: TableRegister

    public init(cr0: UInt32, cr2: UInt32, cr3: UInt32, cr4: UInt32, gdtr: TableRegister, idtr: TableRegister) {
        self.cr0 = cr0; self.cr2 = cr2; self.cr3 = cr3; self.cr4 = cr4; self.gdtr = gdtr; self.idtr = idtr
    }

    /// Those of `state`.
    public init(_ state: CPUState) {
        self.init(cr0: state.cr0, cr2: state.cr2, cr3: state.cr3, cr4: state.cr4, gdtr: state.gdtr, idtr: state.idtr)
    }

    /// `state` with these system registers.
    public func applied(to state: CPUState) -> CPUState {
        var s = state
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.gdtr = gdtr; s.idtr = idtr
        return s
    }
}

/// Reads and writes the vCPU's system registers for the VMM (implemented over the machine; the
/// VMM is given it, as it is given `GuestFaultCallout`).
public protocol SystemRegisterPort: AnyObject {
    func readSystemRegisters() throws(HarnessError) -> SystemRegisters
    func writeSystemRegisters(_ registers: SystemRegisters) throws(HarnessError)
}

extension VirtualMachineManager {
    /// The vCPU's CR0, CR2–CR4, GDTR and IDTR now (for Swift fault handlers: a #NM handler reads
    /// CR0.TS). Harness extension; the DDK's handlers execute the instructions themselves.
    public func readSystemRegisters() throws(HarnessError) -> SystemRegisters {
        guard let port = systemRegisterPort else { throw .unsupported("no machine attached to read system registers") }
        return try port.readSystemRegisters()
    }

    /// Sets the vCPU's CR0, CR2–CR4, GDTR and IDTR; they stay so after the handler returns, as
    /// a ring-0 handler's CLTS does (e.g. `cr0 &= ~CR0.ts` in a lazy-FPU #NM handler).
    public func writeSystemRegisters(_ registers: SystemRegisters) throws(HarnessError) {
        guard let port = systemRegisterPort else { throw .unsupported("no machine attached to write system registers") }
        try port.writeSystemRegisters(registers)
    }
}
