/// Protection: segment loads (SDM vol. 3A, 5.5–5.8), far transfers, IRET, and exception/interrupt
/// delivery through the IDT (6.12), with the error codes of 6.13.
extension Interpreter {
    // MARK: - Descriptors

    /// Reads the descriptor `sel` refers to. #GP(sel | ext) when it lies outside the table.
    func readDescriptor(_ sel: UInt16, ext: UInt32 = 0) throws(Fault) -> SegmentDescriptor {
        let code = UInt32(sel & 0xFFFC) | ext
        let base: UInt32
        let limit: UInt32
        if sel & 4 != 0 {
            if sys.ldtr.unusable || !sys.ldtr.present { throw .gp(code) }
            base = sys.ldtr.base
            limit = sys.ldtr.limit
        } else {
            base = sys.gdtr.base
            limit = UInt32(sys.gdtr.limit)
        }
        let idx = UInt32(sel & 0xFFF8)
        if idx + 7 > limit { throw .gp(code) }
        let lo = try readSys(base &+ idx, 4)
        let hi = try readSys(base &+ idx &+ 4, 4)
        return SegmentDescriptor(raw: UInt64(lo) | UInt64(hi) << 32)
    }

    /// Loads DS/ES/FS/GS/SS with the checks of MOV/POP Sreg (SDM vol. 2, MOV).
    func loadDataSegment(_ i: UInt8, _ sel: UInt16) throws(Fault) {
        if v86 {
            // V86 mode: real-mode style, no checks (SDM vol. 3A, 20.1.1). MOV CS stays #UD.
            guard i < 6, i != SegmentIndex.cs else { throw .ud }
            loadV86Segment(i, sel)
            return
        }
        let code = UInt32(sel & 0xFFFC)
        let rpl = UInt8(sel & 3)
        if i == SegmentIndex.ss {
            if sel & 0xFFFC == 0 { throw .gp(0) }
            let desc = try readDescriptor(sel)
            if rpl != cpl || !desc.isCodeOrData || desc.type & 0xA != 0x2 || desc.dpl != cpl { throw .gp(code) }
            if !desc.present { throw .ss(code) }
            seg[2] = desc.segmentRegister(selector: sel)
            segmentChanged(2)
            return
        }
        guard i < 6, i != SegmentIndex.cs else { throw .ud }
        if sel & 0xFFFC == 0 {
            var n = SegmentRegister.null
            n.selector = sel
            seg[Int(i)] = n
            segmentChanged(i)
            return
        }
        let desc = try readDescriptor(sel)
        if !desc.isCodeOrData { throw .gp(code) }
        let isCode = desc.type & 8 != 0
        if isCode && desc.type & 2 == 0 { throw .gp(code) }
        let conforming = isCode && desc.type & 4 != 0
        if !conforming && (rpl > desc.dpl || cpl > desc.dpl) { throw .gp(code) }
        if !desc.present { throw .np(code) }
        seg[Int(i)] = desc.segmentRegister(selector: sel)
        segmentChanged(i)
    }

    /// LDS/LES/LFS/LGS/LSS.
    func loadFarPointer(_ d: DI, segment: UInt8) throws(Fault) {
        let s = d.operandSize
        let ea = effectiveAddress(d)
        let off = try read(d.segment, ea, s)
        let sel = try read(d.segment, d.address32 ? ea &+ UInt32(s) : (ea &+ UInt32(s)) & 0xFFFF, 2)
        try loadDataSegment(segment, UInt16(truncatingIfNeeded: sel))
        setReg(s, d.reg, off)
    }

    /// Checks a code segment for a same-privilege far JMP/CALL and returns its cache.
    func codeSegmentForTransfer(_ sel: UInt16) throws(Fault) -> SegmentRegister {
        // V86 mode: far JMP/CALL load CS real-mode style (SDM vol. 3A, 20.1.1).
        if v86 { return Interpreter.v86Segment(sel) }
        if sel & 0xFFFC == 0 { throw .gp(0) }
        let code = UInt32(sel & 0xFFFC)
        let desc = try readDescriptor(sel)
        // Call gates, task gates and TSS descriptors are not supported here (#GP(sel)).
        if !desc.isCodeOrData || desc.type & 8 == 0 { throw .gp(code) }
        if desc.type & 4 != 0 {
            if desc.dpl > cpl { throw .gp(code) }
        } else if UInt8(sel & 3) > cpl || desc.dpl != cpl {
            throw .gp(code)
        }
        if !desc.present { throw .np(code) }
        return desc.segmentRegister(selector: (sel & 0xFFFC) | UInt16(cpl))
    }

    func farJump(selector: UInt16, offset: UInt32, _ d: DI) throws(Fault) {
        let cs = try codeSegmentForTransfer(selector)
        let off = d.operandSize == 2 ? offset & 0xFFFF : offset
        if off > cs.limit { throw .gp(0) }
        seg[1] = cs
        segmentChanged(1)
        eip = off
    }

    func farCall(selector: UInt16, offset: UInt32, _ d: DI) throws(Fault) {
        let cs = try codeSegmentForTransfer(selector)
        let off = d.operandSize == 2 ? offset & 0xFFFF : offset
        if off > cs.limit { throw .gp(0) }
        var sp = r[4]
        try pushLocal(&sp, UInt32(seg[1].selector), d.operandSize)
        try pushLocal(&sp, eip, d.operandSize)
        r[4] = sp
        seg[1] = cs
        segmentChanged(1)
        eip = off
    }

    /// Validates the CS of a RETF/IRET to privilege `rpl` (>= CPL).
    func returnCodeSegment(_ sel: UInt16) throws(Fault) -> SegmentDescriptor {
        if sel & 0xFFFC == 0 { throw .gp(0) }
        let code = UInt32(sel & 0xFFFC)
        let rpl = UInt8(sel & 3)
        if rpl < cpl { throw .gp(code) }
        let desc = try readDescriptor(sel)
        if !desc.isCodeOrData || desc.type & 8 == 0 { throw .gp(code) }
        if desc.type & 4 != 0 {
            if desc.dpl > rpl { throw .gp(code) }
        } else if desc.dpl != rpl {
            throw .gp(code)
        }
        if !desc.present { throw .np(code) }
        return desc
    }

    /// Validates the SS popped by a return to an outer ring.
    func returnStackSegment(_ sel: UInt16, rpl: UInt8) throws(Fault) -> SegmentRegister {
        if sel & 0xFFFC == 0 { throw .gp(0) }
        let code = UInt32(sel & 0xFFFC)
        if UInt8(sel & 3) != rpl { throw .gp(code) }
        let desc = try readDescriptor(sel)
        if !desc.isCodeOrData || desc.type & 0xA != 0x2 || desc.dpl != rpl { throw .gp(code) }
        if !desc.present { throw .ss(code) }
        return desc.segmentRegister(selector: sel)
    }

    /// After a return to an outer ring: data segment registers the new CPL may not use are nulled.
    func nullInaccessibleSegments() {
        for i in [SegmentIndex.es, SegmentIndex.ds, SegmentIndex.fs, SegmentIndex.gs] {
            let s = seg[Int(i)]
            if s.unusable { continue }
            let conformingCode = s.isCode && s.type & 4 != 0
            if !conformingCode && s.dpl < cpl {
                var n = SegmentRegister.null
                n.selector = 0
                seg[Int(i)] = n
                segmentChanged(i)
            }
        }
    }

    func farReturn(_ d: DI, extra: UInt32) throws(Fault) {
        if v86 { return try farReturnV86(d, extra: extra) }
        let s = d.operandSize
        var sp = r[4]
        let off = try popLocal(&sp, s) & sizeMask(s)
        let sel = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
        let desc = try returnCodeSegment(sel)
        let rpl = UInt8(sel & 3)
        if off > desc.limit { throw .gp(0) }
        sp = stackBig ? sp &+ extra : (sp & 0xFFFF_0000) | ((sp &+ extra) & 0xFFFF)
        if rpl == cpl {
            seg[1] = desc.segmentRegister(selector: sel)
            segmentChanged(1)
            r[4] = sp
            eip = off
            return
        }
        let newSP = try popLocal(&sp, s)
        let newSSSel = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
        let ss = try returnStackSegment(newSSSel, rpl: rpl)
        seg[1] = desc.segmentRegister(selector: sel)
        segmentChanged(1)
        seg[2] = ss
        segmentChanged(2)
        let nsp = s == 2 ? (r[4] & 0xFFFF_0000) | (newSP & 0xFFFF) : newSP
        r[4] = ss.defaultBig ? nsp &+ extra : (nsp & 0xFFFF_0000) | ((nsp &+ extra) & 0xFFFF)
        eip = off
        nullInaccessibleSegments()
    }

    /// IRET/IRETD in protected mode, same or outer privilege, or back to virtual-8086 mode (SDM
    /// vol. 2, IRET); in V86 mode see `iretInV86`. Task returns (NT = 1) are not supported: #GP(0).
    func iret(_ d: DI) throws(Fault) {
        if v86 { return try iretInV86(d) }
        if flags & EFlags.nt != 0 { throw .gp(0) }
        let s = d.operandSize
        var sp = r[4]
        let off = try popLocal(&sp, s)
        let sel = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
        let newFlags = try popLocal(&sp, s)
        if s == 4 && newFlags & EFlags.vm != 0 && cpl == 0 {
            return try iretToV86(sp: sp, eip: off, cs: sel, eflags: newFlags)
        }
        let desc = try returnCodeSegment(sel)
        let rpl = UInt8(sel & 3)
        if off > desc.limit { throw .gp(0) }
        let oldCPL = cpl
        // Which bits the popped image may change.
        var changeable: UInt32 = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.tf
            | EFlags.df | EFlags.of | EFlags.nt | EFlags.rf | EFlags.ac | EFlags.id
        if oldCPL == 0 { changeable |= EFlags.iopl | EFlags.vif | EFlags.vip }
        if oldCPL <= iopl { changeable |= EFlags.if }
        if s == 2 { changeable &= 0xFFFF }
        var ss: SegmentRegister? = nil
        var outerSP: UInt32 = 0
        if rpl != oldCPL {
            let nsp = try popLocal(&sp, s)
            let nss = UInt16(truncatingIfNeeded: try popLocal(&sp, s))
            ss = try returnStackSegment(nss, rpl: rpl)
            outerSP = nsp
        }
        let f = (eflags & ~changeable) | (newFlags & changeable)
        eflags = f
        seg[1] = desc.segmentRegister(selector: sel)
        segmentChanged(1)
        eip = s == 2 ? off & 0xFFFF : off
        if let ss {
            seg[2] = ss
            segmentChanged(2)
            r[4] = s == 2 ? (r[4] & 0xFFFF_0000) | (outerSP & 0xFFFF) : outerSP
            nullInaccessibleSegments()
        } else {
            r[4] = sp
        }
    }

    // MARK: - Interrupts and exceptions

    /// INT n / INT3 / INTO: a trap delivered with the gate DPL check; EIP is already past it.
    func softwareInterrupt(_ v: UInt8, _ d: DI) throws(Fault) {
        let tf = flags & EFlags.tf != 0
        try deliver(vector: v, errorCode: nil, software: true, external: false, returnEIP: eip)
        if tf { suppressSingleStep = true }
    }

    /// Delivers `vector` through the IDT (SDM vol. 3A, 6.12.1). `software`: INT n/INT3/INTO (gate
    /// DPL check, EXT = 0). `external`: hardware interrupt or exception (EXT = 1 in error codes of
    /// faults raised here). Nothing is committed unless every check and push succeeds.
    ///
    /// From virtual-8086 mode (SDM vol. 3A, 6.12.1 and 20.3.1.1) the handler must be a
    /// non-conforming ring-0 code segment (else #GP(selector)); the ring-0 stack from the TSS gets
    /// GS, FS, DS, ES before SS, ESP, EFLAGS (VM set), CS, EIP and the error code; VM is cleared
    /// and DS, ES, FS, GS are loaded with null. The IOPL check of INT n is done by the caller.
    ///
    /// `faultClass`: a fault raised by an instruction; as the CPU does, RF is set in the EFLAGS
    /// image pushed on the stack (SDM vol. 3A, 17.3.1.1), so a resumed instruction-breakpoint does
    /// not fire again. Traps, software interrupts and external events push EFLAGS as it is.
    func deliver(vector: UInt8, errorCode: UInt32?, software: Bool, external: Bool, returnEIP: UInt32,
                 faultClass: Bool = false) throws(Fault) {
        let ext: UInt32 = external ? 1 : 0
        let idtCode = UInt32(vector) * 8 + 2 + ext
        if UInt32(vector) * 8 + 7 > UInt32(sys.idtr.limit) { throw .gp(idtCode) }
        let lo = try readSys(sys.idtr.base &+ UInt32(vector) * 8, 4)
        let hi = try readSys(sys.idtr.base &+ UInt32(vector) * 8 &+ 4, 4)
        let gate = GateDescriptor(raw: UInt64(lo) | UInt64(hi) << 32)
        guard let kind = gate.kind, kind == .interrupt32 || kind == .trap32 else {
            // Task gates and 16-bit gates are not supported (documented).
            throw .gp(idtCode)
        }
        if software && gate.dpl < cpl { throw .gp(idtCode) }
        if !gate.present { throw .np(idtCode) }
        let sel = gate.selector
        if sel & 0xFFFC == 0 { throw .gp(ext) }
        let selCode = UInt32(sel & 0xFFFC) | ext
        let desc = try readDescriptor(sel, ext: ext)
        if !desc.isCodeOrData || desc.type & 8 == 0 || desc.dpl > cpl { throw .gp(selCode) }
        if !desc.present { throw .np(selCode) }
        let conforming = desc.type & 4 != 0
        let fromV86 = v86
        // From V86 mode the handler must be a non-conforming ring-0 segment (SDM vol. 2, INT n,
        // INTERRUPT-FROM-VIRTUAL-8086-MODE; vol. 3A, 20.3.1.1), else #GP(selector).
        if fromV86 && (conforming || desc.dpl != 0) { throw .gp(selCode) }
        if gate.offset > desc.limit { throw .gp(ext) }
        let oldFlags = faultClass ? eflags | EFlags.rf : eflags
        let oldCS = UInt32(seg[1].selector)
        if !conforming && desc.dpl < cpl {
            // Inter-privilege: the new stack comes from the TSS (32-bit TSS: ESPn at 4 + 8n, SSn at 8 + 8n).
            let n = UInt32(desc.dpl)
            let tr = sys.tr
            let trCode = UInt32(tr.selector & 0xFFFC) | ext
            if tr.unusable || !tr.present || 8 * n + 11 > tr.limit { throw .ts(trCode) }
            let newESP = try readSys(tr.base &+ 4 &+ 8 * n, 4)
            let newSSSel = UInt16(truncatingIfNeeded: try readSys(tr.base &+ 8 &+ 8 * n, 2))
            let ssCode = UInt32(newSSSel & 0xFFFC) | ext
            if newSSSel & 0xFFFC == 0 { throw .ts(ext) }
            if UInt8(newSSSel & 3) != desc.dpl { throw .ts(ssCode) }
            let ssDesc: SegmentDescriptor
            do throws(Fault) {
                ssDesc = try readDescriptor(newSSSel, ext: ext)
            } catch {
                throw .ts(ssCode)
            }
            if !ssDesc.isCodeOrData || ssDesc.type & 0xA != 0x2 || ssDesc.dpl != desc.dpl { throw .ts(ssCode) }
            if !ssDesc.present { throw .ss(ssCode) }
            let newSS = ssDesc.segmentRegister(selector: newSSSel)
            var sp = newESP
            let big = newSS.defaultBig
            let stackFault = Fault.ss(ssCode)
            if fromV86 { try pushV86Segments(newSS, &sp, big: big, fault: stackFault) }
            try pushTo(newSS, &sp, UInt32(seg[2].selector), big: big, fault: stackFault)
            try pushTo(newSS, &sp, r[4], big: big, fault: stackFault)
            try pushTo(newSS, &sp, oldFlags, big: big, fault: stackFault)
            try pushTo(newSS, &sp, oldCS, big: big, fault: stackFault)
            try pushTo(newSS, &sp, returnEIP, big: big, fault: stackFault)
            if let e = errorCode { try pushTo(newSS, &sp, e, big: big, fault: stackFault) }
            if fromV86 { leaveV86Segments() }
            seg[2] = newSS
            segmentChanged(2)
            r[4] = sp
        } else {
            var sp = r[4]
            let ss = seg[2]
            let big = ss.defaultBig
            let stackFault = Fault.ss(ext)
            try pushTo(ss, &sp, oldFlags, big: big, fault: stackFault)
            try pushTo(ss, &sp, oldCS, big: big, fault: stackFault)
            try pushTo(ss, &sp, returnEIP, big: big, fault: stackFault)
            if let e = errorCode { try pushTo(ss, &sp, e, big: big, fault: stackFault) }
            r[4] = sp
        }
        let newCPL = conforming ? cpl : desc.dpl
        seg[1] = desc.segmentRegister(selector: (sel & 0xFFFC) | UInt16(newCPL))
        segmentChanged(1)
        eip = gate.offset
        var f = eflags & ~(EFlags.tf | EFlags.nt | EFlags.rf | EFlags.vm)
        if kind == .interrupt32 { f &= ~EFlags.if }
        eflags = f
    }

    /// One 32-bit push through an explicit stack cache (the new stack of a privilege change or the
    /// current one), as a supervisor access when the stack's DPL is below 3.
    func pushTo(_ ss: SegmentRegister, _ sp: inout UInt32, _ v: UInt32, big: Bool, fault: Fault) throws(Fault) {
        if ss.unusable || !ss.present { throw fault }
        let n = big ? sp &- 4 : (sp & 0xFFFF_0000) | ((sp &- 4) & 0xFFFF)
        let off = big ? n : n & 0xFFFF
        let lin = try linearIn(ss, off, 4, fault: fault)
        try writeLin(lin, 4, v, user: ss.dpl == 3)
        sp = n
    }
}
