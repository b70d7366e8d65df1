/// A segment register with its hidden descriptor cache, as KVM's `struct kvm_segment` and the
/// interpreter hold it.
public struct SegmentRegister: Equatable, Hashable, Sendable {
    /// The visible selector.
    public var selector: UInt16
    /// Linear base address.
    public var base: UInt32
    /// Effective limit in bytes (already scaled by the granularity bit).
    public var limit: UInt32
    /// Descriptor type field (4 bits): for code/data, bit 3 = code, bit 1 = writable/readable, bit 0 = accessed.
    public var type: UInt8
    /// S bit: true for code/data, false for system descriptors (TSS, LDT, gates).
    public var isCodeOrData: Bool
    /// Descriptor privilege level.
    public var dpl: UInt8
    /// P bit.
    public var present: Bool
    /// D/B bit: 32-bit default operand size / stack size.
    public var defaultBig: Bool
    /// G bit (kept so the cache round-trips through KVM exactly).
    public var granularity: Bool
    /// AVL bit.
    public var available: Bool
    /// Marks a null/unusable segment (KVM's `unusable`).
    public var unusable: Bool

    public init(selector: UInt16 = 0, base: UInt32 = 0, limit: UInt32 = 0, type: UInt8 = 0,
                isCodeOrData: Bool = false, dpl: UInt8 = 0, present: Bool = false,
                defaultBig: Bool = false, granularity: Bool = false, available: Bool = false,
                unusable: Bool = false) {
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.isCodeOrData = isCodeOrData
        self.dpl = dpl
        self.present = present
        self.defaultBig = defaultBig
        self.granularity = granularity
        self.available = available
        self.unusable = unusable
    }

    /// A null selector in a data segment register.
    public static let null = SegmentRegister(unusable: true)

    /// Flat 4 GiB code segment (execute/read, accessed).
    public static func flatCode(selector: UInt16, dpl: UInt8) -> SegmentRegister {
        SegmentRegister(selector: selector, base: 0, limit: 0xFFFF_FFFF, type: 0xB, isCodeOrData: true,
                        dpl: dpl, present: true, defaultBig: true, granularity: true)
    }

    /// Flat 4 GiB data segment (read/write, accessed).
    public static func flatData(selector: UInt16, dpl: UInt8) -> SegmentRegister {
        SegmentRegister(selector: selector, base: 0, limit: 0xFFFF_FFFF, type: 0x3, isCodeOrData: true,
                        dpl: dpl, present: true, defaultBig: true, granularity: true)
    }

    /// A virtual-8086-mode segment: base = selector × 16, limit FFFFh, read/write data, DPL 3 (the
    /// cache the CPU loads in V86 mode, and what VMX requires of it).
    public static func v86(selector: UInt16) -> SegmentRegister {
        SegmentRegister(selector: selector, base: UInt32(selector) << 4, limit: 0xFFFF, type: 0x3, isCodeOrData: true,
                        dpl: 3, present: true)
    }

    /// Whether this is a code segment.
    public var isCode: Bool { isCodeOrData && type & 0x8 != 0 }
}

/// A descriptor-table register (GDTR/IDTR).
public struct TableRegister: Equatable, Hashable, Sendable {
    public var base: UInt32
    public var limit: UInt16
    public init(base: UInt32 = 0, limit: UInt16 = 0) {
        self.base = base
        self.limit = limit
    }
}

/// EFLAGS bits by name.
public enum EFlags {
    public static let cf: UInt32 = 1 << 0
    public static let reserved1: UInt32 = 1 << 1
    public static let pf: UInt32 = 1 << 2
    public static let af: UInt32 = 1 << 4
    public static let zf: UInt32 = 1 << 6
    public static let sf: UInt32 = 1 << 7
    public static let tf: UInt32 = 1 << 8
    public static let `if`: UInt32 = 1 << 9
    public static let df: UInt32 = 1 << 10
    public static let of: UInt32 = 1 << 11
    public static let iopl: UInt32 = 3 << 12
    public static let nt: UInt32 = 1 << 14
    public static let rf: UInt32 = 1 << 16
    public static let vm: UInt32 = 1 << 17
    public static let ac: UInt32 = 1 << 18
    public static let vif: UInt32 = 1 << 19
    public static let vip: UInt32 = 1 << 20
    public static let id: UInt32 = 1 << 21
}

/// CR0 bits by name.
public enum CR0 {
    public static let pe: UInt32 = 1 << 0
    public static let mp: UInt32 = 1 << 1
    public static let em: UInt32 = 1 << 2
    public static let ts: UInt32 = 1 << 3
    public static let et: UInt32 = 1 << 4
    public static let ne: UInt32 = 1 << 5
    public static let wp: UInt32 = 1 << 16
    public static let am: UInt32 = 1 << 18
    public static let pg: UInt32 = 1 << 31
}

/// The complete architectural state of the 32-bit guest CPU that the harness moves between the
/// backends, the VMM and reports. Both backends read and write exactly this.
public struct CPUState: Equatable, Hashable, Sendable {
    public var eax: UInt32 = 0
    public var ecx: UInt32 = 0
    public var edx: UInt32 = 0
    public var ebx: UInt32 = 0
    public var esp: UInt32 = 0
    public var ebp: UInt32 = 0
    public var esi: UInt32 = 0
    public var edi: UInt32 = 0
    public var eip: UInt32 = 0
    /// EFLAGS; bit 1 is always set.
    public var eflags: UInt32 = 0x2

    public var cs = SegmentRegister()
    public var ss = SegmentRegister()
    public var ds = SegmentRegister()
    public var es = SegmentRegister()
    public var fs = SegmentRegister()
    public var gs = SegmentRegister()
    /// Task register.
    public var tr = SegmentRegister()
    /// LDT register.
    public var ldtr = SegmentRegister()
    public var gdtr = TableRegister()
    public var idtr = TableRegister()

    public var cr0: UInt32 = 0
    public var cr2: UInt32 = 0
    public var cr3: UInt32 = 0
    public var cr4: UInt32 = 0
    /// Debug registers DR0–DR3, DR6, DR7 (DR4/DR5 alias DR6/DR7).
    public var dr0: UInt32 = 0
    public var dr1: UInt32 = 0
    public var dr2: UInt32 = 0
    public var dr3: UInt32 = 0
    public var dr6: UInt32 = 0xFFFF_0FF0
    public var dr7: UInt32 = 0x400

    public init() {}

    /// Current privilege level: 3 in V86 mode, else CS.RPL.
    public var cpl: UInt8 { eflags & EFlags.vm != 0 ? 3 : UInt8(cs.selector & 3) }

    /// General register by its x86 encoding number (0 = EAX, 1 = ECX, ... 7 = EDI).
    public subscript(gpr index: Int) -> UInt32 {
        get {
            switch index & 7 {
            case 0: return eax
            case 1: return ecx
            case 2: return edx
            case 3: return ebx
            case 4: return esp
            case 5: return ebp
            case 6: return esi
            default: return edi
            }
        }
        set {
            switch index & 7 {
            case 0: eax = newValue
            case 1: ecx = newValue
            case 2: edx = newValue
            case 3: ebx = newValue
            case 4: esp = newValue
            case 5: ebp = newValue
            case 6: esi = newValue
            default: edi = newValue
            }
        }
    }
}

extension CPUState {
    /// Takes the system state `other` holds — CR0, CR2, CR3, CR4, GDTR, IDTR, LDTR and TR — and
    /// keeps everything a Client_Reg_Struc frame holds (general registers, EIP, EFLAGS, segment
    /// registers). What the VMM's IRET after a handler call restores is the frame; the rest stays
    /// as the handler left it (a #NM handler's CLTS, a handler's LIDT).
    public mutating func takeSystemState(of other: CPUState) {
        cr0 = other.cr0; cr2 = other.cr2; cr3 = other.cr3; cr4 = other.cr4
        gdtr = other.gdtr; idtr = other.idtr; ldtr = other.ldtr; tr = other.tr
    }
}

