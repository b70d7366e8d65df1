/// Small Swift virtual devices that ship with the harness, for demos, scenarios (`@devices`) and
/// `vmm-harness run --device NAME`. Each hooks faults in one of the three tiers.
public enum SampleDevices {
    /// The names `make(_:memory:)` knows.
    public static let names = ["late-observer", "critical-fixer", "critical-observer", "pic-nmi-demo"]

    /// Vectors the sample devices hook: #DE, #UD, #GP.
    public static let vectors: [UInt32] = [0x00, 0x06, 0x0D]

    /// Creates a sample device by name, or nil for an unknown name.
    public static func make(_ name: String, memory: GuestMemory) -> (any VirtualDevice)? {
        switch name {
        case "late-observer":
            return HookingDevice(name: "LATEOBS", deviceID: 0x7F01, initOrder: 0x2000, hookAt: .deviceInit,
                                 memory: memory, processes: false)
        case "critical-fixer":
            return HookingDevice(name: "CRITFIX", deviceID: 0x7F02, initOrder: 0x1000, hookAt: .sysCriticalInit,
                                 memory: memory, processes: true)
        case "pic-nmi-demo":
            return PICNMIDemoDevice()
        case "critical-observer":
            return HookingDevice(name: "CRITOBS", deviceID: 0x7F03, initOrder: 0x1000, hookAt: .sysCriticalInit,
                                 memory: memory, processes: false)
        default:
            return nil
        }
    }

    /// Marker a fixer leaves in Client_EAX: FA0000xxh with the vector in the low byte.
    public static func fixMarker(vector: UInt8) -> UInt32 { 0xFA00_0000 | UInt32(vector) }
}

/// A device that hooks #DE, #UD and #GP with Hook_VMM_Fault when it receives `hookAt`. An observer
/// passes every fault on; a fixer processes it: it skips the faulting instruction (its length
/// from the interpreter's decoder) and sets Client_EAX to `SampleDevices.fixMarker(vector:)`.
final class HookingDevice: VirtualDevice {
    let name: String
    let deviceID: UInt16
    let initOrder: UInt32
    let hookAt: ControlMessage
    let memory: GuestMemory
    let processes: Bool

    init(name: String, deviceID: UInt16, initOrder: UInt32, hookAt: ControlMessage, memory: GuestMemory, processes: Bool) {
        self.name = name
        self.deviceID = deviceID
        self.initOrder = initOrder
        self.hookAt = hookAt
        self.memory = memory
        self.processes = processes
    }

    func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool {
        guard message == hookAt else { return true }
        let memory = self.memory
        let processes = self.processes
        for v in SampleDevices.vectors {
            let handler: FaultProc = { _, frame, context in
                guard processes else { return .passedOn }
                // Only flat code segments are decoded (the runtime's CS bases are 0).
                let available = max(0, min(15, memory.size - Int(frame.eip)))
                guard available > 0, let bytes = try? memory.readBytes(frame.eip, count: available),
                      case let .success(insn) = X86Decoder.decode(bytes) else {
                    return .passedOn
                }
                frame.eip &+= UInt32(insn.length)
                frame.eax = SampleDevices.fixMarker(vector: context.vector)
                return .processed
            }
            do {
                _ = try vmm.hookVMMFault(v, name: "\(name) #\(hex(UInt8(v), width: 2))", handler: handler)
            } catch {
                return false
            }
        }
        return true
    }
}

/// At Device_Init: virtualizes IRQ 3 (VPICD_Virtualize_IRQ) with a handler that processes it and
/// sets Client_EBX to `SampleDevices.irqMarker`; installs an NMI handler that
/// passes the NMI on (Get/Set_NMI_Handler_Addr) and an NMI event (Hook_NMI_Event) that sets
/// Client_ECX to `SampleDevices.nmiMarker`.
final class PICNMIDemoDevice: VirtualDevice {
    let name = "PICNMI"
    let deviceID: UInt16 = 0x7F04
    let initOrder: UInt32 = 0x2000

    func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool {
        guard message == .deviceInit else { return true }
        do {
            _ = try vmm.virtualizeIRQ(irq: 3, name: "PICNMI IRQ 3") { _, frame, _ in
                frame.ebx = SampleDevices.irqMarker
                return .processed
            }
            _ = try vmm.installNMIHandler(name: "PICNMI NMI") { _, _, _ in .passedOn }
            try vmm.hookNMIEvent(name: "PICNMI NMI event") { _, frame, _ in
                frame.ecx = SampleDevices.nmiMarker
            }
        } catch {
            return false
        }
        return true
    }
}

extension SampleDevices {
    /// Client_EBX after `pic-nmi-demo`'s IRQ 3 handler ran.
    public static let irqMarker: UInt32 = 0x1A0_0003
    /// Client_ECX after `pic-nmi-demo`'s NMI event ran.
    public static let nmiMarker: UInt32 = 0x0A0_0002
}
