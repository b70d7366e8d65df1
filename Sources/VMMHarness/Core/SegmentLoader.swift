/// Why the host refused to load a selector while resuming the guest or switching rings.
public struct SegmentLoadError: Error, Equatable, Sendable, CustomStringConvertible {
    public var register: String
    public var selector: UInt16
    public var reason: String
    public var description: String { "cannot load \(register) = \(hex(selector, width: 4)): \(reason)" }
}

/// Host-side segment loads (for resuming the guest from a frame and for the ring-3 switch), with
/// the protected-mode checks a CPU makes on IRET (SDM vol. 3A, 5.8 and IRET's operation), reading
/// descriptors from the guest's GDT through bounds-checked guest memory.
public struct SegmentLoader {
    public var memory: GuestMemory
    public var gdtr: TableRegister

    public init(memory: GuestMemory, gdtr: TableRegister) {
        self.memory = memory
        self.gdtr = gdtr
    }

    func descriptor(_ sel: UInt16, _ reg: String) throws(SegmentLoadError) -> SegmentDescriptor {
        let s = Selector(sel)
        guard !s.isLocal else { throw SegmentLoadError(register: reg, selector: sel, reason: "LDT selectors are not supported") }
        let offset = UInt32(s.index) * 8
        guard offset + 7 <= UInt32(gdtr.limit) else {
            throw SegmentLoadError(register: reg, selector: sel, reason: "beyond the GDT limit")
        }
        do {
            return SegmentDescriptor(raw: try memory.read64(gdtr.base &+ offset))
        } catch {
            throw SegmentLoadError(register: reg, selector: sel, reason: "GDT entry outside guest memory")
        }
    }

    /// CS for privilege level RPL(selector): a present code segment, DPL = RPL (non-conforming).
    public func loadCode(_ sel: UInt16) throws(SegmentLoadError) -> SegmentRegister {
        guard !Selector(sel).isNull else { throw SegmentLoadError(register: "CS", selector: sel, reason: "null selector") }
        let d = try descriptor(sel, "CS")
        guard d.isCodeOrData, d.type & 0x8 != 0 else { throw SegmentLoadError(register: "CS", selector: sel, reason: "not a code segment") }
        let conforming = d.type & 0x4 != 0
        guard conforming ? d.dpl <= Selector(sel).rpl : d.dpl == Selector(sel).rpl else {
            throw SegmentLoadError(register: "CS", selector: sel, reason: "DPL \(d.dpl) does not match RPL \(Selector(sel).rpl)")
        }
        guard d.present else { throw SegmentLoadError(register: "CS", selector: sel, reason: "not present") }
        return d.segmentRegister(selector: sel)
    }

    /// SS for privilege level `cpl`: a present writable data segment with DPL = RPL = CPL.
    public func loadStack(_ sel: UInt16, cpl: UInt8) throws(SegmentLoadError) -> SegmentRegister {
        guard !Selector(sel).isNull else { throw SegmentLoadError(register: "SS", selector: sel, reason: "null selector") }
        let d = try descriptor(sel, "SS")
        guard d.isCodeOrData, d.type & 0x8 == 0, d.type & 0x2 != 0 else {
            throw SegmentLoadError(register: "SS", selector: sel, reason: "not a writable data segment")
        }
        guard Selector(sel).rpl == cpl, d.dpl == cpl else {
            throw SegmentLoadError(register: "SS", selector: sel, reason: "RPL/DPL differ from CPL \(cpl)")
        }
        guard d.present else { throw SegmentLoadError(register: "SS", selector: sel, reason: "not present") }
        return d.segmentRegister(selector: sel)
    }

    /// DS/ES/FS/GS for `cpl`. A null selector loads an unusable segment; as on IRET to an outer
    /// level, a data segment the new CPL may not use is nulled rather than refused.
    public func loadData(_ sel: UInt16, cpl: UInt8, name: String) throws(SegmentLoadError) -> SegmentRegister {
        if Selector(sel).isNull { return SegmentRegister(selector: sel, unusable: true) }
        let d = try descriptor(sel, name)
        guard d.isCodeOrData, d.type & 0x8 == 0 || d.type & 0x2 != 0 else {
            throw SegmentLoadError(register: name, selector: sel, reason: "not a data or readable code segment")
        }
        let conformingCode = d.type & 0xC == 0xC
        if !conformingCode && (d.dpl < cpl || d.dpl < Selector(sel).rpl) {
            return SegmentRegister(selector: 0, unusable: true)
        }
        guard d.present else { throw SegmentLoadError(register: name, selector: sel, reason: "not present") }
        return d.segmentRegister(selector: sel)
    }
}
