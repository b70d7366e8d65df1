/// Get_Fault_Hook_Addrs's answer: the newest handler (the head) of each chain for one vector.
public struct FaultHookAddresses: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// EDX: the Hook_V86_Fault chain's head, nil (0) when the chain is empty.
    public var v86: FaultHandlerAddress?
    /// ESI: the Hook_PM_Fault chain's head.
    public var pm: FaultHandlerAddress?
    /// EDI: the Hook_VMM_Fault chain's head.
    public var vmm: FaultHandlerAddress?

    public init(v86: FaultHandlerAddress?, pm: FaultHandlerAddress?, vmm: FaultHandlerAddress?) {
        self.v86 = v86; self.pm = pm; self.vmm = vmm
    }

    /// The head for `chain`.
    public subscript(chain: FaultChainKind) -> FaultHandlerAddress? {
        switch chain {
        case .v86: return v86
        case .pm: return pm
        case .vmm: return vmm
        }
    }

    public var description: String {
        func d(_ a: FaultHandlerAddress?) -> String { a?.description ?? "00000000" }
        return "V86 \(d(v86)) PM \(d(pm)) VMM \(d(vmm))"
    }
}

/// Hook_VMM_Fault and Unhook_VMM_Fault, the handler slots, chain reports, and the hooking shared
/// by the whole family (validation, naming, tiers, Unhook relinking).
extension VirtualMachineManager {
    /// Hook_VMM_Fault (0081h) with a Swift handler: allocates the handler a host-area address and
    /// installs it at the head of `interrupt`'s chain.
    ///
    /// - Parameters:
    ///   - interrupt: EAX, the whole register: 02h (NMI) and anything above 4Fh are refused.
    ///   - name: shown in traces and violation reports.
    ///   - handler: the `FaultProc`.
    /// - Returns: the previous handler (ESI), nil when there was none (ESI = 0).
    /// - Throws: `.invalidFaultNumber` (carry set): nothing installed.
    @discardableResult
    public func hookVMMFault(_ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookVMMFault)
        return try hookHost(.vmm, interrupt, name: name, handler: handler)
    }

    /// Hook_VMM_Fault (0081h) with a handler address (ESI): a guest address, or one returned by
    /// `registerFaultHandler`/an earlier hook. Returns the previous handler (nil = none).
    @discardableResult
    public func hookVMMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookVMMFault)
        return try hook(.vmm, interrupt: interrupt, address: address)
    }

    /// Unhook_VMM_Fault (011Bh, VMM 4.0+): removes the newest hook of `address` on `interrupt`; the
    /// hook that had it as previous now passes on to its previous. Throws `.notHooked` (carry set).
    public func unhookVMMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress) throws(FaultHookError) {
        note(ordinal: VMMServiceOrdinal.unhookVMMFault)
        try unhook(.vmm, interrupt: interrupt, address: address)
    }

    /// Gives a Swift handler a host-area address without hooking it (hook it with
    /// `hookVMMFault(_:handlerAt:)`, possibly on several vectors). Not a VMM service.
    public func registerFaultHandler(name: String, handler: @escaping FaultProc) throws(FaultHookError)
        -> FaultHandlerAddress
    {
        guard let a = store.allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        return a
    }

    /// The Hook_VMM_Fault chain for `vector`, newest (first visited) first.
    public func faultChain(_ vector: UInt8) -> [FaultChainEntry] {
        faultChain(.vmm, vector)
    }

    /// The `chain` (VMM, PM or V86) for `vector`, newest (first visited) first.
    public func faultChain(_ chain: FaultChainKind, _ vector: UInt8) -> [FaultChainEntry] {
        store.chain(from: store.head(chain, vector)).map(chainEntry)
    }

    /// How a record appears in chain reports.
    func chainEntry(_ index: Int) -> FaultChainEntry {
        let r = store.records[index]
        return FaultChainEntry(address: r.address, name: r.name, tier: r.tier, kind: r.kind.label,
                               previous: r.previousAddress, owner: r.owner.map { devices.name($0) })
    }

    /// The name of the handler at `address` (host slot, named guest handler), if known.
    public func handlerName(at address: FaultHandlerAddress) -> String? {
        if let s = store.slot(at: address) { return s.name }
        return guestHandlerNames[address]
    }

    /// Whether `address` is a host handler's (a Swift or VMM handler slot in use).
    public func isHostHandler(_ address: FaultHandlerAddress) -> Bool { store.slot(at: address) != nil }

    /// The Hook_*_Fault rule for EAX: not 02h (the NMI's), not above 4Fh (50h and up are the PIC's).
    static func validate(_ interrupt: UInt32) throws(FaultHookError) -> UInt8 {
        guard interrupt != 0x02, interrupt <= 0x4F else { throw .invalidFaultNumber(interrupt) }
        return UInt8(interrupt)
    }

    /// Hook_*_Fault with a Swift handler: a new slot, hooked at the head.
    func hookHost(_ chain: FaultChainKind, _ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        let vector = try Self.validate(interrupt)
        guard let address = store.allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        return store.hookFault(chain, vector: vector, address: address, name: name, kind: .host(handler),
                               tier: store.newHookTier, owner: devices.current)
    }

    /// Hook_*_Fault with a handler address (the register face's ESI).
    func hook(_ chain: FaultChainKind, interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError)
        -> FaultHandlerAddress?
    {
        let vector = try Self.validate(interrupt)
        guard address.rawValue != 0 else { throw .nullHandler }
        let (name, kind) = describeHandler(at: address)
        return store.hookFault(chain, vector: vector, address: address, name: name, kind: kind,
                               tier: store.newHookTier, owner: devices.current)
    }

    /// Unhook_*_Fault: removes the newest hook of `address` in `chain`'s chain for `interrupt`.
    func unhook(_ chain: FaultChainKind, interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError) {
        let vector = try Self.validate(interrupt)
        guard let i = store.findFault(chain, vector: vector, address: address) else {
            throw .notHooked(interrupt: interrupt, handler: address)
        }
        unlink(i)
    }

    /// Unlinks a fault hook and tells the guest when a guest hook's previous changed.
    func unlink(_ index: Int) {
        if let r = store.unlink(index) {
            guestCallout?.guestHookRelinked(chain: r.chain, handler: r.handler, vector: r.vector,
                                            newPrevious: r.newPrevious)
        }
    }

    /// Name and kind of the handler at `address`: a host slot's, or a guest handler's (named after
    /// its symbol, else the device whose control procedure hooks it).
    func describeHandler(at address: FaultHandlerAddress) -> (String, FaultHandlerKind) {
        if let s = store.slot(at: address) { return (s.name, s.kind) }
        let name = guestHandlerNames[address] ?? devices.currentName ?? "guest handler"
        return (name, .guest(address))
    }
}

/// The rest of the fault-hook family: Hook_PM_Fault, Hook_V86_Fault, their Unhook_* services and
/// Get_Fault_Hook_Addrs. Each chain kind has its own chain per vector; validation (02h and numbers
/// above 4Fh refused, nothing installed), "returns the previous handler", tiers, register rules
/// and Unhook relinking are those of Hook_VMM_Fault.
extension VirtualMachineManager {
    /// Hook_PM_Fault (0080h) with a Swift handler: a handler for faults in protected-mode
    /// applications (ring 3). Returns the previous handler of that PM chain (nil = none).
    /// Throws `.invalidFaultNumber` (carry set) for 02h or above 4Fh.
    @discardableResult
    public func hookPMFault(_ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookPMFault)
        return try hookHost(.pm, interrupt, name: name, handler: handler)
    }

    /// Hook_PM_Fault (0080h) with a handler address (ESI). Returns the previous handler (nil = none).
    @discardableResult
    public func hookPMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookPMFault)
        return try hook(.pm, interrupt: interrupt, address: address)
    }

    /// Hook_V86_Fault (007Fh) with a Swift handler: a handler for faults in virtual-8086 mode.
    /// Returns the previous handler of that V86 chain (nil = none).
    @discardableResult
    public func hookV86Fault(_ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookV86Fault)
        return try hookHost(.v86, interrupt, name: name, handler: handler)
    }

    /// Hook_V86_Fault (007Fh) with a handler address (ESI). Returns the previous handler (nil = none).
    @discardableResult
    public func hookV86Fault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookV86Fault)
        return try hook(.v86, interrupt: interrupt, address: address)
    }

    /// Unhook_PM_Fault (011Ah, VMM 4.0+): removes the newest hook of `address` on `interrupt`'s PM
    /// chain; the hook that had it as previous passes on to its previous. Throws `.notHooked`.
    public func unhookPMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress) throws(FaultHookError) {
        note(ordinal: VMMServiceOrdinal.unhookPMFault)
        try unhook(.pm, interrupt: interrupt, address: address)
    }

    /// Unhook_V86_Fault (0119h, VMM 4.0+): as `unhookPMFault`, on the V86 chain.
    public func unhookV86Fault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress) throws(FaultHookError) {
        note(ordinal: VMMServiceOrdinal.unhookV86Fault)
        try unhook(.v86, interrupt: interrupt, address: address)
    }

    /// Hook_VMM_Fault, Hook_PM_Fault or Hook_V86_Fault by chain kind (Swift handler).
    @discardableResult
    public func hookFault(_ chain: FaultChainKind, _ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookFault(chain))
        return try hookHost(chain, interrupt, name: name, handler: handler)
    }

    /// Hook_VMM_Fault, Hook_PM_Fault or Hook_V86_Fault by chain kind (handler address).
    @discardableResult
    public func hookFault(_ chain: FaultChainKind, _ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookFault(chain))
        return try hook(chain, interrupt: interrupt, address: address)
    }

    /// Unhook_VMM_Fault, Unhook_PM_Fault or Unhook_V86_Fault by chain kind.
    public func unhookFault(_ chain: FaultChainKind, _ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError)
    {
        note(ordinal: VMMServiceOrdinal.unhookFault(chain))
        try unhook(chain, interrupt: interrupt, address: address)
    }

    /// Get_Fault_Hook_Addrs (007Eh): the newest handler of the V86 (EDX), PM (ESI) and VMM (EDI)
    /// chains of `interrupt`, nil (0) where a chain is empty. After boot the VMM's own handlers
    /// make each chain non-empty for the vectors its policy covers.
    /// Throws `.invalidFaultNumber` (carry set) for 02h or above 4Fh.
    public func getFaultHookAddrs(_ interrupt: UInt32) throws(FaultHookError) -> FaultHookAddresses {
        note(ordinal: VMMServiceOrdinal.getFaultHookAddrs)
        return try faultHookAddresses(interrupt)
    }

    func faultHookAddresses(_ interrupt: UInt32) throws(FaultHookError) -> FaultHookAddresses {
        let vector = try Self.validate(interrupt)
        func head(_ chain: FaultChainKind) -> FaultHandlerAddress? {
            store.head(chain, vector).map { store.records[$0].address }
        }
        return FaultHookAddresses(v86: head(.v86), pm: head(.pm), vmm: head(.vmm))
    }
}
