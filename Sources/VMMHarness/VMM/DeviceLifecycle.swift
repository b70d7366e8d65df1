/// The virtual devices the VMM knows (the DDB list of SYSTEM.INI's `device=` lines), whether each
/// is loaded, and which one's control procedure is running.
struct DeviceRegistry {
    enum State { case registered, loaded, failed }
    struct Entry {
        var device: any VirtualDevice
        var state: State
    }
    private(set) var entries: [Entry] = []
    /// Index of the device whose control procedure is running (the owner of hooks made meanwhile).
    var current: Int?

    /// Checks the DDB name and id and adds the device.
    mutating func add(_ device: any VirtualDevice) throws(DeviceRegistrationError) {
        let name = device.name
        guard (1...8).contains(name.utf8.count), name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .invalidName(name)
        }
        if device.deviceID == VMMServiceTable.vmmDeviceID { throw .duplicateDeviceID(device.deviceID, existing: "VMM") }
        if device.deviceID != 0, let other = entries.first(where: { $0.device.deviceID == device.deviceID }) {
            throw .duplicateDeviceID(device.deviceID, existing: other.device.name)
        }
        entries.append(Entry(device: device, state: .registered))
    }

    /// Device indices in ascending init order (`DDB_Init_Order`), ties in registration order.
    var initOrder: [Int] {
        entries.indices.sorted { (entries[$0].device.initOrder, $0) < (entries[$1].device.initOrder, $1) }
    }

    func name(_ index: Int) -> String { entries[index].device.name }

    /// The name of the device whose control procedure is running, if any.
    var currentName: String? { current.map { entries[$0].device.name } }

    mutating func setState(_ state: State, of index: Int) { entries[index].state = state }

    /// The first device whose code range holds `eip`: name, id and range start.
    func codeOwner(of eip: UInt32) -> (name: String, id: UInt16, start: UInt32)? {
        for entry in entries {
            if let r = entry.device.codeRange, r.contains(eip) {
                return (entry.device.name, entry.device.deviceID, r.lowerBound)
            }
        }
        return nil
    }
}

// MARK: - Devices, boot and shutdown

extension VirtualMachineManager {
    /// Adds a device before boot (the DDB list of SYSTEM.INI `device=` lines).
    public func register(_ device: any VirtualDevice) throws(DeviceRegistrationError) {
        guard phase == .notBooted else { throw .alreadyBooted(device.name) }
        try devices.add(device)
    }

    /// Boots: Sys_Critical_Init (interrupts disabled) to every device in init order; the VMM installs
    /// its own fault handlers; then Device_Init, Init_Complete and Sys_VM_Init (interrupts enabled).
    ///
    /// A device that fails (carry set) Sys_Critical_Init, Device_Init or Init_Complete is dropped:
    /// it gets no further messages, and every hook made while its control procedure ran is removed
    /// with Unhook_VMM_Fault semantics (newest first); the boot log lists them. A failure at
    /// Sys_VM_Init ends boot with `BootError.sysVMInitFailed` (Windows exits).
    @discardableResult
    public func boot() throws(BootError) -> [BootEvent] {
        guard phase == .notBooted else { throw .alreadyBooted }
        let order = devices.initOrder
        for i in order { devices.setState(.loaded, of: i) }

        interruptsEnabled = false
        phase = .sysCriticalInit
        broadcast(.sysCriticalInit, to: order, dropOnFailure: true)

        installOwnHandlers()
        interruptsEnabled = true

        phase = .deviceInit
        broadcast(.deviceInit, to: order, dropOnFailure: true)
        phase = .initComplete
        broadcast(.initComplete, to: order, dropOnFailure: true)
        phase = .sysVMInit
        for i in order where devices.entries[i].state == .loaded {
            if !send(.sysVMInit, to: i) {
                phase = .failed
                throw .sysVMInitFailed(device: devices.name(i))
            }
        }
        phase = .running
        return bootLog
    }

    /// Shuts down: Sys_VM_Terminate, System_Exit, then Sys_Critical_Exit with interrupts disabled,
    /// each to every loaded device in init order. Failures are logged only.
    @discardableResult
    public func shutdown() -> [BootEvent] {
        let order = devices.initOrder
        phase = .shuttingDown
        broadcast(.sysVMTerminate, to: order, dropOnFailure: false)
        broadcast(.systemExit, to: order, dropOnFailure: false)
        interruptsEnabled = false
        broadcast(.sysCriticalExit, to: order, dropOnFailure: false)
        phase = .shutDown
        return bootLog
    }

    /// Names of the devices in init order with whether they are loaded (for reports).
    public var deviceStates: [(name: String, loaded: Bool)] {
        devices.initOrder.map { (devices.name($0), devices.entries[$0].state != .failed) }
    }

    private func broadcast(_ message: ControlMessage, to order: [Int], dropOnFailure: Bool) {
        for i in order where devices.entries[i].state == .loaded {
            if !send(message, to: i), dropOnFailure { drop(i, after: message) }
        }
    }

    /// Sends one control message (`System_Control`); false = carry set. The control procedure
    /// may call services, so no access to the registry is held across the call.
    private func send(_ message: ControlMessage, to index: Int) -> Bool {
        let device = devices.entries[index].device
        devices.current = index
        let ok = device.control(message: message, vm: systemVM, vmm: self)
        devices.current = nil
        bootLog.append(BootEvent(kind: .controlMessage, device: device.name, message: message, succeeded: ok,
                                 interruptsEnabled: interruptsEnabled, detail: ""))
        return ok
    }

    private func drop(_ index: Int, after message: ControlMessage) {
        devices.setState(.failed, of: index)
        var removed: [String] = []
        for r in store.records.indices.reversed() where store.records[r].active && store.records[r].owner == index {
            let record = store.records[r]
            guard case let .fault(chain) = record.role else { continue }
            let prefix = chain == .vmm ? "" : "\(chain.rawValue) "
            removed.append("\(prefix)\(vmmHex(record.vector, 2))h \(record.address)")
            unlink(r)
        }
        let detail = "not loaded (failed \(message.name)); "
            + (removed.isEmpty ? "no fault hooks to remove" : "unhooked " + removed.joined(separator: ", "))
        bootLog.append(BootEvent(kind: .deviceUnloaded, device: devices.name(index), message: message,
                                 succeeded: false, interruptsEnabled: interruptsEnabled, detail: detail))
    }

    /// The VMM's own fault handlers, right after Sys_Critical_Init: VMM-chain handlers in ordinary
    /// slots, PM and V86 handlers in their reserved slots.
    private func installOwnHandlers() {
        var installed = 0
        for v in configuration.ownFaultPolicy.vectors {
            guard let address = store.allocateSlot(name: "VMM", kind: .vmmDefault) else { break }
            _ = store.hookFault(.vmm, vector: v, address: address, name: "VMM", kind: .vmmDefault, tier: .vmm,
                                owner: nil)
            installed += 1
        }
        var other: [String] = []
        for chain in [FaultChainKind.pm, .v86] {
            var n = 0
            for v in ownPolicy(chain).vectors {
                guard let address = VMMHostArea.ownHandlerAddress(chain, vector: v) else { continue }
                _ = store.hookFault(chain, vector: v, address: address, name: "VMM", kind: .vmmDefault, tier: .vmm,
                                    owner: nil)
                n += 1
            }
            other.append("\(n) \(chain.rawValue)")
        }
        store.markOwnHandlersInstalled()
        bootLog.append(BootEvent(kind: .vmmHandlersInstalled, device: "VMM", message: nil, succeeded: true,
                                 interruptsEnabled: interruptsEnabled,
                                 detail: "installed its own fault handlers for \(installed) vectors"
                                     + " (and " + other.joined(separator: ", ") + ")"))
    }

    /// The policy of the VMM's own handlers in `chain`.
    func ownPolicy(_ chain: FaultChainKind) -> VMMOwnFaultPolicy {
        switch chain {
        case .vmm: return configuration.ownFaultPolicy
        case .pm: return configuration.ownPMFaultPolicy
        case .v86: return configuration.ownV86FaultPolicy
        }
    }
}
