/// An 8-byte segment or system descriptor from the GDT/LDT (Intel SDM vol. 3A, 3.4.5, figure 3-8).
public struct SegmentDescriptor: Equatable, Hashable, Sendable {
    /// The descriptor as the CPU reads it from memory (little-endian qword).
    public var raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// Encodes a descriptor. `limit` is the 20-bit raw limit field (in 4 KiB units when `granularity`).
    public init(base: UInt32, limit: UInt32, type: UInt8, isCodeOrData: Bool, dpl: UInt8, present: Bool,
                defaultBig: Bool, granularity: Bool, available: Bool = false) {
        var r: UInt64 = 0
        r |= UInt64(limit & 0xFFFF)
        r |= UInt64(base & 0xFF_FFFF) << 16
        r |= UInt64(type & 0xF) << 40
        r |= (isCodeOrData ? 1 : 0) << 44
        r |= UInt64(dpl & 3) << 45
        r |= (present ? 1 : 0) << 47
        r |= UInt64((limit >> 16) & 0xF) << 48
        r |= (available ? 1 : 0) << 52
        r |= (defaultBig ? 1 : 0) << 54
        r |= (granularity ? 1 : 0) << 55
        r |= UInt64(base >> 24) << 56
        raw = r
    }

    public var base: UInt32 { UInt32(truncatingIfNeeded: (raw >> 16) & 0xFF_FFFF) | UInt32(truncatingIfNeeded: raw >> 56) << 24 }
    /// The 20-bit raw limit field.
    public var rawLimit: UInt32 { UInt32(truncatingIfNeeded: raw & 0xFFFF) | UInt32(truncatingIfNeeded: (raw >> 48) & 0xF) << 16 }
    /// The limit in bytes, scaled by G.
    public var limit: UInt32 { granularity ? (rawLimit << 12) | 0xFFF : rawLimit }
    public var type: UInt8 { UInt8(truncatingIfNeeded: (raw >> 40) & 0xF) }
    public var isCodeOrData: Bool { (raw >> 44) & 1 != 0 }
    public var dpl: UInt8 { UInt8(truncatingIfNeeded: (raw >> 45) & 3) }
    public var present: Bool { (raw >> 47) & 1 != 0 }
    public var available: Bool { (raw >> 52) & 1 != 0 }
    public var defaultBig: Bool { (raw >> 54) & 1 != 0 }
    public var granularity: Bool { (raw >> 55) & 1 != 0 }

    /// The segment-register cache this descriptor loads for `selector`.
    public func segmentRegister(selector: UInt16) -> SegmentRegister {
        SegmentRegister(selector: selector, base: base, limit: limit, type: type, isCodeOrData: isCodeOrData,
                        dpl: dpl, present: present, defaultBig: defaultBig, granularity: granularity,
                        available: available, unusable: false)
    }
}

/// An IDT gate descriptor (SDM vol. 3A, 6.11, figure 6-2): interrupt, trap or task gate.
public struct GateDescriptor: Equatable, Hashable, Sendable {
    public enum Kind: UInt8, Sendable {
        case task = 0x5
        case interrupt16 = 0x6
        case trap16 = 0x7
        case interrupt32 = 0xE
        case trap32 = 0xF
    }

    public var raw: UInt64
    public init(raw: UInt64) { self.raw = raw }

    public init(offset: UInt32, selector: UInt16, kind: Kind, dpl: UInt8, present: Bool = true) {
        var r: UInt64 = 0
        r |= UInt64(offset & 0xFFFF)
        r |= UInt64(selector) << 16
        r |= UInt64(kind.rawValue) << 40
        r |= UInt64(dpl & 3) << 45
        r |= (present ? 1 : 0) << 47
        r |= UInt64(offset >> 16) << 48
        raw = r
    }

    public var offset: UInt32 { UInt32(truncatingIfNeeded: raw & 0xFFFF) | UInt32(truncatingIfNeeded: raw >> 48) << 16 }
    public var selector: UInt16 { UInt16(truncatingIfNeeded: raw >> 16) }
    /// Type field; nil when it is not a valid gate type (including S = 1).
    public var kind: Kind? {
        guard (raw >> 44) & 1 == 0 else { return nil }
        return Kind(rawValue: UInt8(truncatingIfNeeded: (raw >> 40) & 0xF))
    }
    public var dpl: UInt8 { UInt8(truncatingIfNeeded: (raw >> 45) & 3) }
    public var present: Bool { (raw >> 47) & 1 != 0 }
}

/// A selector's parts (SDM vol. 3A, 3.4.2).
public struct Selector: Equatable, Hashable, Sendable {
    public var raw: UInt16
    public init(_ raw: UInt16) { self.raw = raw }
    public var rpl: UInt8 { UInt8(raw & 3) }
    /// Table indicator: true for the LDT.
    public var isLocal: Bool { raw & 4 != 0 }
    public var index: Int { Int(raw >> 3) }
    /// True for 0–3 (null selector in the GDT).
    public var isNull: Bool { raw & 0xFFFC == 0 }
}
