/// Virtual-8086 mode (SDM vol. 3A, chapter 20 "8086 Emulation"), without the virtual-mode
/// extensions (CR4.VME and CR4.PVI are not honoured: the interpreter behaves as if both were 0).
///
/// While EFLAGS.VM = 1 the CPU runs at CPL 3 with 16-bit default operand and address size; every
/// segment register load is real-mode style (base = selector << 4, limit FFFFh, no descriptor
/// checks: 20.1.1). The IOPL-sensitive instructions CLI, STI, PUSHF, POPF, INT n and IRET raise
/// #GP(0) when IOPL < 3 (20.2.7); IN/OUT/INS/OUTS consult only the TSS I/O permission bitmap
/// (20.2.8.1). Interrupts and exceptions leave V86 mode for ring 0 through the IDT (20.3.1.1,
/// 6.12.1) and IRET at CPL 0 with EFLAGS.VM set in the popped image returns to it (IRET, vol. 2).
extension Interpreter {
    /// Whether the CPU is in virtual-8086 mode (EFLAGS.VM; never part of the lazy flags).
    @inline(__always)
    var v86: Bool { flags & EFlags.vm != 0 }

    /// The segment cache a V86 segment load produces (20.1.1): base = selector << 4, limit FFFFh,
    /// a present read/write accessed data segment of DPL 3, 16-bit. This is also the cache VMX
    /// requires for every segment register of a V86 guest (vol. 3C, 27.3.1.2), CS included, so
    /// writes through a CS override work as on hardware.
    static func v86Segment(_ selector: UInt16) -> SegmentRegister {
        SegmentRegister(selector: selector, base: UInt32(selector) << 4, limit: 0xFFFF, type: 0x3,
                        isCodeOrData: true, dpl: 3, present: true, defaultBig: false, granularity: false)
    }

    /// MOV/POP Sreg, LDS/LES/LFS/LGS/LSS, far JMP/CALL/RET in V86 mode: no checks at all.
    func loadV86Segment(_ i: UInt8, _ selector: UInt16) {
        let n = Int(i % 6)
        seg[n] = Interpreter.v86Segment(selector)
        segmentChanged(UInt8(n))
    }

    // MARK: - I/O permission

    /// The TSS I/O permission bitmap check (SDM vol. 1, 19.5.2; vol. 3A, 20.2.8.1): the 16-bit I/O
    /// map base is at TSS offset 66h; every bit of `port ..< port + size` must be clear, and the
    /// two bytes holding them (the CPU always reads two) must lie within the TSS limit, else
    /// #GP(0). A TSS that is not a 32-bit TSS, or whose limit is below 67h, allows no I/O. Used
    /// in V86 mode always and in protected mode when CPL > IOPL.
    func checkIOPermissionBitmap(port: UInt16, size: UInt8) throws(Fault) {
        let tr = sys.tr
        if tr.unusable || !tr.present || tr.isCodeOrData || tr.type & 0x9 != 0x9 || tr.limit < 0x67 { throw .gp(0) }
        let mapBase = try readSys(tr.base &+ 0x66, 2)
        let byteOffset = mapBase &+ UInt32(port >> 3)
        if UInt64(byteOffset) + 1 > UInt64(tr.limit) { throw .gp(0) }
        let bits = try readSys(tr.base &+ byteOffset, 2)
        let mask = ((UInt32(1) << UInt32(size)) &- 1) << UInt32(port & 7)
        if bits & mask != 0 { throw .gp(0) }
    }

    /// The permission check of IN, OUT, INS and OUTS (SDM vol. 1, 19.5): in protected mode
    /// CPL <= IOPL allows every port and CPL > IOPL consults the TSS bitmap; V86 mode ignores
    /// IOPL and always consults the bitmap.
    @inline(__always)
    func checkIOPermission(port: UInt16, size: UInt8) throws(Fault) {
        if v86 || cpl > iopl {
            try checkIOPermissionBitmap(port: port, size: size)
        }
    }

    // MARK: - Transfers inside V86 mode

    /// RETF/RETF imm16 in V86 mode: pops IP and CS as in real mode; an IP beyond FFFFh is #GP(0).
    func farReturnV86(_ d: DI, extra: UInt32) throws(Fault) {
        let s = d.operandSize
        var sp = r[4]
        let off = try popLocal(&sp, s)
        let sel = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
        if off > 0xFFFF { throw .gp(0) }
        sp = (sp & 0xFFFF_0000) | ((sp &+ extra) & 0xFFFF)
        loadV86Segment(SegmentIndex.cs, sel)
        r[4] = sp
        eip = off
    }

    /// IRET/IRETD executed in V86 mode (SDM vol. 2, IRET, "VM = 1"): #GP(0) unless IOPL = 3; then a
    /// real-mode style return that pops (E)IP, CS and (E)FLAGS. VM, IOPL, VIP and VIF are not
    /// changed by the popped image; an IP beyond FFFFh is #GP(0).
    func iretInV86(_ d: DI) throws(Fault) {
        if iopl < 3 { throw .gp(0) }
        let s = d.operandSize
        var sp = r[4]
        let off = try popLocal(&sp, s)
        let sel = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
        let newFlags = try popLocal(&sp, s)
        if off > 0xFFFF { throw .gp(0) }
        var changeable: UInt32 = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.tf
            | EFlags.if | EFlags.df | EFlags.of | EFlags.nt | EFlags.rf | EFlags.ac | EFlags.id
        if s == 2 { changeable &= 0xFFFF }
        eflags = (eflags & ~changeable) | (newFlags & changeable)
        loadV86Segment(SegmentIndex.cs, sel)
        r[4] = sp
        eip = off
    }

    /// IRETD at CPL 0 whose popped EFLAGS has VM = 1 (SDM vol. 2, IRET,
    /// RETURN-TO-VIRTUAL-8086-MODE). EIP, CS and EFLAGS are already popped (`sp` is past them):
    /// pops ESP, SS, ES, DS, FS, GS (dwords, high words ignored), loads EFLAGS whole and every
    /// segment register real-mode style, and resumes at CPL 3. Nothing changes unless all pops
    /// succeed. An EIP beyond FFFFh is loaded as is and faults (#GP(0), CS limit) when fetched.
    func iretToV86(sp start: UInt32, eip newEIP: UInt32, cs: UInt16, eflags newFlags: UInt32) throws(Fault) {
        var sp = start
        let newESP = try popLocal(&sp, 4)
        var sel: (UInt16, UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0, 0)
        sel.0 = UInt16(truncatingIfNeeded: try popLocal(&sp, 4))  // SS
        sel.1 = UInt16(truncatingIfNeeded: try popLocal(&sp, 4))  // ES
        sel.2 = UInt16(truncatingIfNeeded: try popLocal(&sp, 4))  // DS
        sel.3 = UInt16(truncatingIfNeeded: try popLocal(&sp, 4))  // FS
        sel.4 = UInt16(truncatingIfNeeded: try popLocal(&sp, 4))  // GS
        // EFLAGS first: segmentChanged(CS) derives CPL 3 from VM.
        eflags = (newFlags & ~UInt32(0xFFC0_0000 | (1 << 3) | (1 << 5) | (1 << 15))) | 2
        loadV86Segment(SegmentIndex.cs, cs)
        loadV86Segment(SegmentIndex.ss, sel.0)
        loadV86Segment(SegmentIndex.es, sel.1)
        loadV86Segment(SegmentIndex.ds, sel.2)
        loadV86Segment(SegmentIndex.fs, sel.3)
        loadV86Segment(SegmentIndex.gs, sel.4)
        r[4] = newESP
        eip = newEIP
    }

    // MARK: - Leaving V86 mode through the IDT

    /// The part of an interrupt or exception from V86 mode that differs from a ring-3 one
    /// (SDM vol. 3A, 6.12.1 and 20.3.1.1): on the ring-0 stack GS, FS, DS, ES are pushed first
    /// (zero-extended dwords), before SS, ESP, EFLAGS, CS, EIP.
    func pushV86Segments(_ newSS: SegmentRegister, _ sp: inout UInt32, big: Bool, fault: Fault) throws(Fault) {
        for i in [SegmentIndex.gs, SegmentIndex.fs, SegmentIndex.ds, SegmentIndex.es] {
            try pushTo(newSS, &sp, UInt32(seg[Int(i)].selector), big: big, fault: fault)
        }
    }

    /// After the V86 frame is committed: VM cleared and DS, ES, FS, GS loaded with null
    /// (unusable) selectors, as the CPU does so ring-0 code cannot use V86 segment values.
    func leaveV86Segments() {
        flags &= ~EFlags.vm
        for i in [SegmentIndex.es, SegmentIndex.ds, SegmentIndex.fs, SegmentIndex.gs] {
            seg[Int(i)] = SegmentRegister.null
            segmentChanged(i)
        }
    }

    /// Normalizes a host-written V86 state: every segment cache becomes what a V86 load of its
    /// selector produces (the host only has to set the selectors and EFLAGS.VM).
    func normalizeV86Segments() {
        for i in 0..<6 { seg[i] = Interpreter.v86Segment(seg[i].selector) }
    }
}
