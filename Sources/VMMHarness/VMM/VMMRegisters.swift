/// A 32-bit guest-visible address that identifies a fault handler.
///
/// Every handler in a fault chain has one, whatever it is made of: guest handlers are plain guest
/// addresses; Swift handlers and the VMM's own handlers get addresses in the host area
/// (`MemoryMap.hostAreaBase + 16 * n`, see `VMMHostArea`). This is what `Hook_VMM_Fault` takes in
/// ESI and hands back as the previous handler, so "ESI = previous handler" is always a real address.
public struct FaultHandlerAddress: RawRepresentable, Hashable, Comparable, Sendable, Codable,
    CustomStringConvertible
{
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    /// Eight uppercase hex digits, as a debugger shows an address.
    public var description: String { vmmHex(rawValue, 8) }
}

/// A VM handle (the DDK's `VMHandle`: the address of the VM's control block).
public typealias VMHandle = UInt32

/// The layout the VMM uses in the host area (`MemoryMap.hostAreaBase`, 64 KiB).
///
/// | range | what |
/// |---|---|
/// | 0009_0000–0009_E4FF | handler slots, 16 bytes each (3664 slots): VMM handlers first, then Swift handlers |
/// | 0009_E500–0009_E9FF | reserved slots: the VMM's own Hook_PM_Fault handler for vector v at E500 + 16v |
/// | 0009_EA00–0009_EEFF | reserved slots: the VMM's own Hook_V86_Fault handler for vector v at EA00 + 16v |
/// | 0009_EF00–0009_EFFF | reserved slots: the VMM's default NMI handler at EF00, 15 spare |
/// | 0009_F000–0009_FFFF | the system VM's control block; its address is the system VM handle |
public enum VMMHostArea {
    /// Address of handler slot 0.
    public static let handlerBase: UInt32 = MemoryMap.hostAreaBase
    /// Bytes per handler slot (room for a small guest stub that exits to the host).
    public static let slotSize: UInt32 = 16
    /// Number of handler slots.
    public static let slotCount: UInt32 = 0xF00
    /// The default system VM handle (its control block lives in the host area's last page).
    public static let systemVMHandle: VMHandle = MemoryMap.hostAreaBase + 0xF000

    /// Address of handler slot `n`, or nil past the last slot.
    public static func slotAddress(_ n: UInt32) -> FaultHandlerAddress? {
        n < slotCount ? FaultHandlerAddress(handlerBase + n * slotSize) : nil
    }

    /// Slots at the top of the handler area kept for the VMM's own PM/V86 handlers and its NMI
    /// handler (fixed addresses, so installing them does not move any other handler's address).
    public static let reservedSlotCount: UInt32 = 0xB0
    /// Slots `registerFaultHandler`, the hook services and the VMM's own VMM-chain handlers draw from.
    public static let allocatableSlotCount: UInt32 = slotCount - reservedSlotCount
    private static let pmSlot0 = slotCount - reservedSlotCount
    private static let v86Slot0 = pmSlot0 + 0x50
    private static let nmiSlot = v86Slot0 + 0x50

    /// The fixed address of the VMM's own handler for `vector` in the PM or V86 chain (nil for
    /// `.vmm`, whose handlers take ordinary slots at boot, and for vectors above 4Fh).
    public static func ownHandlerAddress(_ chain: FaultChainKind, vector: UInt8) -> FaultHandlerAddress? {
        guard vector <= 0x4F else { return nil }
        switch chain {
        case .vmm: return nil
        case .pm: return slotAddress(pmSlot0 + UInt32(vector))
        case .v86: return slotAddress(v86Slot0 + UInt32(vector))
        }
    }

    /// Which reserved PM/V86 slot `address` is, if any.
    public static func ownHandlerOwner(_ address: FaultHandlerAddress) -> (chain: FaultChainKind, vector: UInt8)? {
        let a = address.rawValue
        guard isHandlerSlot(a), (a - handlerBase) % slotSize == 0 else { return nil }
        let n = (a - handlerBase) / slotSize
        if n >= pmSlot0, n < v86Slot0 { return (.pm, UInt8(n - pmSlot0)) }
        if n >= v86Slot0, n < nmiSlot { return (.v86, UInt8(n - v86Slot0)) }
        return nil
    }

    /// The VMM's default NMI handler, the end of the NMI chain (what Get_NMI_Handler_Addr returns
    /// before any Set_NMI_Handler_Addr).
    public static var defaultNMIHandler: FaultHandlerAddress { FaultHandlerAddress(handlerBase + nmiSlot * slotSize) }

    /// Whether `address` lies in the handler slots.
    public static func isHandlerSlot(_ address: UInt32) -> Bool {
        address >= handlerBase && address - handlerBase < slotCount * slotSize
    }
}

/// The registers a fault handler is called with and leaves behind (`call [FaultProc]`):
/// EBX = current VM handle, EBP = guest address of the frame (`Client_Reg_Struc`), IF clear.
public struct HandlerRegisters: Equatable, Hashable, Sendable, Codable {
    public var eax: UInt32 = 0
    public var ebx: UInt32 = 0
    public var ecx: UInt32 = 0
    public var edx: UInt32 = 0
    public var esi: UInt32 = 0
    public var edi: UInt32 = 0
    public var ebp: UInt32 = 0
    public var esp: UInt32 = 0
    public var eflags: UInt32 = 0x2
    public var cs: UInt16 = Selectors.ring0Code
    public var ds: UInt16 = Selectors.ring0Data
    public var es: UInt16 = Selectors.ring0Data
    public var fs: UInt16 = Selectors.ring0Data
    public var gs: UInt16 = Selectors.ring0Data
    public var ss: UInt16 = Selectors.ring0Data

    public init() {}

    /// The general, flag and segment registers of `cpu` (selectors only).
    public init(_ cpu: CPUState) {
        eax = cpu.eax; ebx = cpu.ebx; ecx = cpu.ecx; edx = cpu.edx
        esi = cpu.esi; edi = cpu.edi; ebp = cpu.ebp; esp = cpu.esp; eflags = cpu.eflags
        cs = cpu.cs.selector; ds = cpu.ds.selector; es = cpu.es.selector
        fs = cpu.fs.selector; gs = cpu.gs.selector; ss = cpu.ss.selector
    }

    /// `==` written out without short-circuits, so it compiles to a few compares rather than a
    /// memcmp call (it runs once per handler visit).
    @inline(__always)
    func sameValues(as o: HandlerRegisters) -> Bool {
        let general = (eax ^ o.eax) | (ebx ^ o.ebx) | (ecx ^ o.ecx) | (edx ^ o.edx) | (esi ^ o.esi) | (edi ^ o.edi)
            | (ebp ^ o.ebp) | (esp ^ o.esp) | (eflags ^ o.eflags)
        let segments = (cs ^ o.cs) | (ds ^ o.ds) | (es ^ o.es) | (fs ^ o.fs) | (gs ^ o.gs) | (ss ^ o.ss)
        return general == 0 && segments == 0
    }

    /// Register names and values, in a fixed order (used for diffs and rule checks).
    public var namedValues: [(name: String, value: UInt32)] {
        [("EAX", eax), ("EBX", ebx), ("ECX", ecx), ("EDX", edx), ("ESI", esi), ("EDI", edi),
         ("EBP", ebp), ("ESP", esp), ("EFLAGS", eflags),
         ("CS", UInt32(cs)), ("DS", UInt32(ds)), ("ES", UInt32(es)), ("FS", UInt32(fs)),
         ("GS", UInt32(gs)), ("SS", UInt32(ss))]
    }

    /// The registers a service sees when a fault handler calls one.
    public var serviceRegisters: ServiceRegisters {
        ServiceRegisters(eax: eax, ebx: ebx, ecx: ecx, edx: edx, esi: esi, edi: edi, ebp: ebp, esp: esp,
                         eflags: eflags)
    }

    /// Takes the service's results back (general registers and EFLAGS; ESP/EBP/segments unchanged).
    public mutating func update(from s: ServiceRegisters) {
        eax = s.eax; ebx = s.ebx; ecx = s.ecx; edx = s.edx; esi = s.esi; edi = s.edi; ebp = s.ebp
        eflags = s.eflags
    }
}

/// The registers of a register-based VMM service call (`VMMcall`): inputs on entry, results on
/// return. Services preserve what they do not document as output.
public struct ServiceRegisters: Equatable, Hashable, Sendable, Codable {
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32
    public var esi: UInt32
    public var edi: UInt32
    public var ebp: UInt32
    /// ESP where the caller has one (guest calls); nil for Swift callers.
    public var esp: UInt32?
    public var eflags: UInt32

    public init(eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0, esi: UInt32 = 0,
                edi: UInt32 = 0, ebp: UInt32 = 0, esp: UInt32? = nil, eflags: UInt32 = 0x2) {
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
        self.esi = esi; self.edi = edi; self.ebp = ebp; self.esp = esp; self.eflags = eflags
    }

    /// The general registers and EFLAGS of `cpu`.
    public init(_ cpu: CPUState) {
        self.init(eax: cpu.eax, ebx: cpu.ebx, ecx: cpu.ecx, edx: cpu.edx, esi: cpu.esi, edi: cpu.edi,
                  ebp: cpu.ebp, esp: cpu.esp, eflags: cpu.eflags)
    }

    /// The carry flag (most services: set = failure).
    public var carry: Bool {
        get { eflags & EFlags.cf != 0 }
        set { eflags = newValue ? eflags | EFlags.cf : eflags & ~EFlags.cf }
    }

    /// The zero flag (the Test_* services: set = true).
    public var zero: Bool {
        get { eflags & EFlags.zf != 0 }
        set { eflags = newValue ? eflags | EFlags.zf : eflags & ~EFlags.zf }
    }
}

/// One value that changed: a register or a frame field, old and new.
public struct ValueChange: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    /// Register name (`EAX`) or frame field in VMM.INC spelling (`Client_EIP`).
    public var name: String
    public var old: UInt32
    public var new: UInt32
    public init(name: String, old: UInt32, new: UInt32) {
        self.name = name; self.old = old; self.new = new
    }
    public var description: String { "\(name) \(vmmHex(old, 8)) -> \(vmmHex(new, 8))" }

    /// The values that differ between two equally ordered name/value lists.
    static func diff(_ a: [(name: String, value: UInt32)], _ b: [(name: String, value: UInt32)]) -> [ValueChange] {
        zip(a, b).compactMap { x, y in x.value == y.value ? nil : ValueChange(name: x.name, old: x.value, new: y.value) }
    }
}

extension ClientRegisters {
    /// Every field with its VMM.INC name (`Client_EAX`, ...), in offset order.
    public var namedFields: [(name: String, value: UInt32)] {
        [("Client_EDI", edi), ("Client_ESI", esi), ("Client_EBP", ebp), ("Client_res0", pushadESP),
         ("Client_EBX", ebx), ("Client_EDX", edx), ("Client_ECX", ecx), ("Client_EAX", eax),
         ("Client_Error", error), ("Client_EIP", eip), ("Client_CS", UInt32(cs)),
         ("Client_EFlags", eflags), ("Client_ESP", esp), ("Client_SS", UInt32(ss)),
         ("Client_ES", UInt32(es)), ("Client_DS", UInt32(ds)), ("Client_FS", UInt32(fs)),
         ("Client_GS", UInt32(gs)), ("Client_Alt_EIP", altEIP), ("Client_Alt_CS", UInt32(altCS)),
         ("Client_Alt_EFlags", altEFlags), ("Client_Alt_ESP", altESP), ("Client_Alt_SS", UInt32(altSS)),
         ("Client_Alt_ES", UInt32(altES)), ("Client_Alt_DS", UInt32(altDS)), ("Client_Alt_FS", UInt32(altFS)),
         ("Client_Alt_GS", UInt32(altGS))]
    }
}

/// A frame as it goes into a report: every field by its VMM.INC name.
public struct FrameSnapshot: Equatable, Sendable, Codable, CustomStringConvertible {
    public var fields: [String: UInt32]
    /// The field names in offset order (JSON objects have none).
    public var order: [String]
    public init(_ frame: ClientRegisters) {
        let named = frame.namedFields
        fields = Dictionary(named.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
        order = named.map(\.name)
    }
    private init() {
        fields = [:]
        order = []
    }
    /// No fields (a dispatch that records no trace).
    public static let empty = FrameSnapshot()
    public var description: String {
        order.map { "\($0)=\(vmmHex(fields[$0] ?? 0, 8))" }.joined(separator: " ")
    }
}

/// `value` as uppercase hex, zero-padded to at least `digits` digits.
func vmmHex<T: BinaryInteger>(_ value: T, _ digits: Int) -> String {
    let s = String(value, radix: 16, uppercase: true)
    return s.count >= digits ? s : String(repeating: "0", count: digits - s.count) + s
}
