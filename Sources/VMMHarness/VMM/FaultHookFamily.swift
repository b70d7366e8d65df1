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
        return FaultHookAddresses(v86: chainHead(.v86, vector), pm: chainHead(.pm, vector), vmm: chainHead(.vmm, vector))
    }
}
