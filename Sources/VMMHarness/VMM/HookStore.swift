/// Where a hooked handler sits, which decides how the VMM calls it and reads its end.
enum HandlerRole: Equatable {
    /// A `FaultProc` in the Hook_VMM_Fault, Hook_PM_Fault or Hook_V86_Fault chain of its vector:
    /// near `ret` = processed, jump to the previous handler = passed on.
    case fault(FaultChainKind)
    /// An NMI handler (Set_NMI_Handler_Addr) in the NMI chain: it must jump to its previous handler;
    /// one that returns ends the chain early. It may call no service at all.
    case nmiHandler
    /// A Hook_NMI_Event procedure: runs after the NMI chain and returns (always "processed").
    case nmiEvent
    /// The hardware-interrupt procedure of IRQ n (VPICD_Virtualize_IRQ's `VID_Hw_Int_Proc`):
    /// returns with CF clear (processed) or CF set (not processed).
    case irq(UInt8)
}

/// One hooked handler, whatever hooked it: a fault hook, an NMI handler, an NMI event procedure or
/// a virtualized IRQ's handler. Records are only ever appended (a record's index never changes);
/// Unhook_*_Fault and VPICD_Force_Default_Behavior mark them inactive.
struct HookedHandler {
    var role: HandlerRole
    /// The fault's vector; 02h for NMI handlers and events; 50h + n for IRQ n.
    var vector: UInt8
    var address: FaultHandlerAddress
    var name: String
    var kind: FaultHandlerKind
    /// When it was hooked (fault and NMI chains); `.postCriticalInit` for events and IRQ handlers,
    /// which have no tiers (their traces show them so).
    var tier: FaultHookTier
    /// The previous handler given to this hook (what it passes on to); nil for events and IRQs.
    var previousAddress: FaultHandlerAddress?
    /// The record of that previous handler (the chain link).
    var previousRecord: Int?
    /// The device whose control procedure made this fault hook (index into the device registry);
    /// dropped with the device when it fails initialization. nil outside control procedures and
    /// for NMI, event and IRQ records, which a failing device keeps.
    var owner: Int?
    var active: Bool

    /// How diagnostics name it while it runs.
    var label: String {
        switch role {
        case .fault: return "\(name) at \(address)"
        case .nmiHandler: return "NMI handler \(name) at \(address)"
        case .nmiEvent: return "NMI event \(name) at \(address)"
        case let .irq(n): return "IRQ \(n) handler \(name) at \(address)"
        }
    }
}

/// A host-area handler slot in use: what `hookVMMFault(_:handlerAt:)` finds behind the address.
struct HostSlot {
    var name: String
    var kind: FaultHandlerKind
}

/// The newest record of each fault chain, by chain and vector: a flat table, since every fault
/// looks its chain up (a dictionary lookup hashed the key each time).
struct ChainHeads {
    private var table = [Int32](repeating: -1, count: FaultChainKind.allCases.count * 256)

    private static func slot(_ chain: FaultChainKind, _ vector: UInt8) -> Int {
        let row: Int
        switch chain {
        case .vmm: row = 0
        case .pm: row = 1
        case .v86: row = 2
        }
        return row &* 256 &+ Int(vector)
    }

    subscript(chain: FaultChainKind, vector: UInt8) -> Int? {
        get {
            let v = table[Self.slot(chain, vector)]
            return v < 0 ? nil : Int(v)
        }
        set { table[Self.slot(chain, vector)] = newValue.map { Int32(truncatingIfNeeded: $0) } ?? -1 }
    }
}

/// Unhook relinked a guest hook: its stored previous pointer must become `newPrevious`.
struct GuestRelink {
    var chain: FaultChainKind
    var handler: FaultHandlerAddress
    var vector: UInt8
    var newPrevious: FaultHandlerAddress?
}

/// Every hooked handler and the host-area slots: the fault chains (Hook_*_Fault), the NMI chain
/// (Set_NMI_Handler_Addr), the NMI events (Hook_NMI_Event) and the virtualized IRQs. Pure data:
/// validation, naming and reporting are the services' business.
///
/// The NMI chain ends at record 0, the VMM's default NMI handler (`VMMHostArea.defaultNMIHandler`),
/// which does nothing.
struct HookStore {
    private(set) var records: [HookedHandler]
    private var heads = ChainHeads()
    /// The current NMI handler's record (Get_NMI_Handler_Addr).
    private(set) var nmiHead = 0
    /// Hook_NMI_Event records in install (= run) order.
    private(set) var nmiEvents: [Int] = []
    /// The virtualized handler's record per IRQ.
    private var irqHandlers = [Int?](repeating: nil, count: Int(VirtualPIC.irqCount))
    private var slots: [HostSlot] = []
    /// Whether the VMM's own fault handlers are in (after Sys_Critical_Init).
    private(set) var ownHandlersInstalled = false

    init() {
        records = [HookedHandler(role: .nmiHandler, vector: 0x02, address: VMMHostArea.defaultNMIHandler, name: "VMM",
                                 kind: .vmmDefault, tier: .vmm, previousAddress: nil, previousRecord: nil, owner: nil,
                                 active: true)]
    }

    /// The tier a hook made now gets.
    var newHookTier: FaultHookTier { ownHandlersInstalled ? .postCriticalInit : .criticalInit }

    mutating func markOwnHandlersInstalled() { ownHandlersInstalled = true }

    // MARK: Fault chains

    /// The newest record of `chain` for `vector`.
    func head(_ chain: FaultChainKind, _ vector: UInt8) -> Int? { heads[chain, vector] }

    /// Hooks `address` at the head of `chain`'s chain for `vector`; returns the previous head's
    /// address (nil = the chain was empty).
    mutating func hookFault(_ chain: FaultChainKind, vector: UInt8, address: FaultHandlerAddress, name: String,
                            kind: FaultHandlerKind, tier: FaultHookTier, owner: Int?) -> FaultHandlerAddress? {
        let head = heads[chain, vector]
        let previous = head.map { records[$0].address }
        records.append(HookedHandler(role: .fault(chain), vector: vector, address: address, name: name, kind: kind,
                                     tier: tier, previousAddress: previous, previousRecord: head, owner: owner,
                                     active: true))
        heads[chain, vector] = records.count - 1
        return previous
    }

    /// The newest hook of `address` in `chain`'s chain for `vector`.
    func findFault(_ chain: FaultChainKind, vector: UInt8, address: FaultHandlerAddress) -> Int? {
        var cursor = heads[chain, vector]
        var steps = 0
        while let i = cursor, steps <= records.count {
            if records[i].address == address { return i }
            cursor = records[i].previousRecord
            steps += 1
        }
        return nil
    }

    /// Unhook semantics: the newer hook whose previous is `index` takes over `index`'s previous.
    /// Returns what the guest must be told when that newer hook is guest code.
    mutating func unlink(_ index: Int) -> GuestRelink? {
        let r = records[index]
        records[index].active = false
        guard case let .fault(chain) = r.role else { return nil }
        if heads[chain, r.vector] == index {
            heads[chain, r.vector] = r.previousRecord
        } else if let newer = records.indices.first(where: { records[$0].active && records[$0].previousRecord == index }) {
            records[newer].previousRecord = r.previousRecord
            records[newer].previousAddress = r.previousAddress
            if case let .guest(a) = records[newer].kind {
                return GuestRelink(chain: chain, handler: a, vector: r.vector, newPrevious: r.previousAddress)
            }
        }
        return nil
    }

    /// Record indices from `head` along the previous links (a chain, newest first).
    func chain(from head: Int?) -> [Int] {
        var out: [Int] = []
        var cursor = head
        while let i = cursor, out.count <= records.count {
            out.append(i)
            cursor = records[i].previousRecord
        }
        return out
    }

    // MARK: NMI

    /// Set_NMI_Handler_Addr: `address` becomes the current NMI handler, its previous the one that
    /// was current.
    mutating func setNMIHandler(_ address: FaultHandlerAddress, name: String, kind: FaultHandlerKind,
                                tier: FaultHookTier) {
        records.append(HookedHandler(role: .nmiHandler, vector: 0x02, address: address, name: name, kind: kind,
                                     tier: tier, previousAddress: records[nmiHead].address, previousRecord: nmiHead,
                                     owner: nil, active: true))
        nmiHead = records.count - 1
    }

    /// Hook_NMI_Event: appends an event procedure.
    mutating func addNMIEvent(_ address: FaultHandlerAddress, name: String, kind: FaultHandlerKind) {
        records.append(HookedHandler(role: .nmiEvent, vector: 0x02, address: address, name: name, kind: kind,
                                     tier: .postCriticalInit, previousAddress: nil, previousRecord: nil, owner: nil,
                                     active: true))
        nmiEvents.append(records.count - 1)
    }

    // MARK: Virtual PIC

    /// The record of IRQ `irq`'s virtualized handler (`irq` < 16).
    func irqHandler(_ irq: UInt8) -> Int? {
        Int(irq) < irqHandlers.count ? irqHandlers[Int(irq)] : nil
    }

    /// VPICD_Virtualize_IRQ (the caller checked that `irq` is free and in range).
    mutating func virtualizeIRQ(_ irq: UInt8, address: FaultHandlerAddress, name: String, kind: FaultHandlerKind)
        -> Int
    {
        records.append(HookedHandler(role: .irq(irq), vector: VirtualPIC.baseVector &+ irq, address: address,
                                     name: name, kind: kind, tier: .postCriticalInit, previousAddress: nil,
                                     previousRecord: nil, owner: nil, active: true))
        irqHandlers[Int(irq)] = records.count - 1
        return records.count - 1
    }

    /// VPICD_Force_Default_Behavior: false when `irq` was not virtualized.
    mutating func forceDefaultBehavior(_ irq: UInt8) -> Bool {
        guard let i = irqHandler(irq) else { return false }
        records[i].active = false
        irqHandlers[Int(irq)] = nil
        return true
    }

    /// The virtualized IRQs' records, by IRQ number.
    var virtualizedIRQs: [Int] { irqHandlers.compactMap { $0 } }

    // MARK: Host-area slots

    /// Gives a host handler the next free slot (never reused), nil when none is left.
    mutating func allocateSlot(name: String, kind: FaultHandlerKind) -> FaultHandlerAddress? {
        guard UInt32(slots.count) < VMMHostArea.allocatableSlotCount,
              let a = VMMHostArea.slotAddress(UInt32(slots.count)) else { return nil }
        slots.append(HostSlot(name: name, kind: kind))
        return a
    }

    /// The host handler behind `address`: an allocated slot, the default NMI handler, or (once
    /// installed) one of the VMM's own PM/V86 handlers in their reserved slots.
    func slot(at address: FaultHandlerAddress) -> HostSlot? {
        let a = address.rawValue
        guard VMMHostArea.isHandlerSlot(a), (a - VMMHostArea.handlerBase) % VMMHostArea.slotSize == 0 else { return nil }
        let n = Int((a - VMMHostArea.handlerBase) / VMMHostArea.slotSize)
        if n < slots.count { return slots[n] }
        if address == VMMHostArea.defaultNMIHandler { return HostSlot(name: "VMM", kind: .vmmDefault) }
        if ownHandlersInstalled, VMMHostArea.ownHandlerOwner(address) != nil {
            return HostSlot(name: "VMM", kind: .vmmDefault)
        }
        return nil
    }
}
