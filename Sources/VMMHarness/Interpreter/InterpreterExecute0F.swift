/// The executor for two-byte opcodes `0F xx` (SDM vol. 2, appendix A, table A-3).
extension Interpreter {
    @inline(__always)
    func requireCPL0() throws(Fault) {
        if cpl != 0 { throw .gp(0) }
    }

    func execTwoByte(_ d: DI) throws(Fault) {
        let op = UInt8(truncatingIfNeeded: d.opcode)
        switch op {
        case 0x00: try group6(d)
        case 0x01: try group7(d)
        case 0x02, 0x03: try larLsl(d, lsl: op == 0x03)
        case 0x06:
            try requireCPL0()
            sys.cr0 &= ~CR0.ts
        case 0x08, 0x09:
            try requireCPL0()
        case 0x0B:
            throw .ud
        case 0x18...0x1F:
            break  // hint NOPs: no memory access
        case 0x20:
            try requireCPL0()
            let v: UInt32
            switch d.reg {
            case 0: v = sys.cr0
            case 2: v = sys.cr2
            case 3: v = sys.cr3
            default: v = sys.cr4
            }
            r[Int(d.rm & 7)] = v
        case 0x22:
            try requireCPL0()
            let v = r[Int(d.rm & 7)]
            switch d.reg {
            case 0:
                if v & CR0.pg != 0 && v & CR0.pe == 0 { throw .gp(0) }
                if v & (1 << 29) != 0 && v & (1 << 30) == 0 { throw .gp(0) }  // NW without CD
                if v & CR0.pe == 0 { throw .gp(0) }  // real mode is not supported (documented)
                sys.cr0 = v | CR0.et
                controlChanged()
            case 2: sys.cr2 = v
            case 3:
                sys.cr3 = v
                flushTLB()
            default:
                // Bits beyond PGE and PAE (PAE paging is not implemented) are #GP(0).
                if v & ~UInt32(0x0000_00DF) != 0 { throw .gp(0) }
                sys.cr4 = v
                controlChanged()
            }
        case 0x21, 0x23:
            try requireCPL0()
            var n = d.reg
            if n == 4 || n == 5 {
                if sys.cr4 & 8 != 0 { throw .ud }
                n += 2
            }
            if op == 0x21 {
                let v: UInt32
                switch n {
                case 0: v = sys.dr0
                case 1: v = sys.dr1
                case 2: v = sys.dr2
                case 3: v = sys.dr3
                case 6: v = sys.dr6
                default: v = sys.dr7
                }
                r[Int(d.rm & 7)] = v
            } else {
                let v = r[Int(d.rm & 7)]
                switch n {
                case 0: sys.dr0 = v
                case 1: sys.dr1 = v
                case 2: sys.dr2 = v
                case 3: sys.dr3 = v
                case 6: sys.dr6 = v | 0xFFFF_0FF0
                default: sys.dr7 = (v | 0x400) & ~UInt32(0x0000_D000)
                }
            }
        case 0x31:
            if sys.cr4 & 4 != 0 && cpl != 0 { throw .gp(0) }
            r[0] = UInt32(truncatingIfNeeded: instructionsExecuted)
            r[2] = UInt32(truncatingIfNeeded: instructionsExecuted >> 32)
        case 0x40...0x4F:
            let v = try readRM(d, d.operandSize)
            if condition(op & 0xF) { setReg(d.operandSize, d.reg, v) }
        case 0x80...0x8F:
            if condition(op & 0xF) { try jump(eip &+ d.immediate, d) }
        case 0x90...0x9F:
            try writeRM(d, 1, condition(op & 0xF) ? 1 : 0)
        case 0xA0, 0xA8:
            try push(UInt32(seg[Int(op == 0xA0 ? SegmentIndex.fs : SegmentIndex.gs)].selector), d.operandSize)
        case 0xA1, 0xA9:
            var sp = r[4]
            let v = try popLocal(&sp, d.operandSize)
            try loadDataSegment(op == 0xA1 ? SegmentIndex.fs : SegmentIndex.gs, UInt16(truncatingIfNeeded: v))
            r[4] = sp
        case 0xA2:
            cpuid()
        case 0xA3, 0xAB, 0xB3, 0xBB, 0xBA:
            try bitTest(d, op)
        case 0xA4, 0xA5, 0xAC, 0xAD:
            let s = d.operandSize
            let count = (op & 1 == 0 ? d.immediate : r[1]) & 0x1F
            let src = getReg(s, d.reg)
            let left = op <= 0xA5
            if !d.isMemory {
                setReg(s, d.rm, shiftDouble(left: left, getReg(s, d.rm), src, count, s))
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = shiftDouble(left: left, try readLin(lin, s, user: user), src, count, s)
                try writeLin(lin, s, res, user: user)
            }
        case 0xAF:
            let s = d.operandSize
            setReg(s, d.reg, imul2(getReg(s, d.reg), try readRM(d, s), s))
        case 0xB0, 0xB1:
            let s = d.size
            let src = getReg(s, d.reg)
            if !d.isMemory {
                let dst = getReg(s, d.rm)
                _ = alu(7, getReg(s, 0), dst, s)
                if zf { setReg(s, d.rm, src) } else { setReg(s, 0, dst) }
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let dst = try readLin(lin, s, user: user)
                _ = alu(7, getReg(s, 0), dst, s)
                if zf {
                    try writeLin(lin, s, src, user: user)
                } else {
                    try writeLin(lin, s, dst, user: user)
                    setReg(s, 0, dst)
                }
            }
        case 0xB2:
            try loadFarPointer(d, segment: SegmentIndex.ss)
        case 0xB4:
            try loadFarPointer(d, segment: SegmentIndex.fs)
        case 0xB5:
            try loadFarPointer(d, segment: SegmentIndex.gs)
        case 0xB6, 0xB7, 0xBE, 0xBF:
            let srcSize: UInt8 = op & 1 == 0 ? 1 : 2
            var v = try readRM(d, srcSize)
            if op >= 0xBE { v = signExtend(v, srcSize) }
            setReg(d.operandSize, d.reg, v & sizeMask(d.operandSize))
        case 0xBC, 0xBD:
            let s = d.operandSize
            let v = try readRM(d, s) & sizeMask(s)
            materialize()
            if v == 0 {
                flags |= EFlags.zf
            } else {
                flags &= ~EFlags.zf
                let idx = op == 0xBC ? UInt32(v.trailingZeroBitCount) : UInt32(31 - v.leadingZeroBitCount)
                setReg(s, d.reg, idx)
            }
        case 0xC0, 0xC1:
            let s = d.size
            let src = getReg(s, d.reg)
            if !d.isMemory {
                let dst = getReg(s, d.rm)
                let sum = alu(0, dst, src, s)
                setReg(s, d.reg, dst)
                setReg(s, d.rm, sum)
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let dst = try readLin(lin, s, user: user)
                let sum = alu(0, dst, src, s)
                try writeLin(lin, s, sum, user: user)
                setReg(s, d.reg, dst)
            }
        case 0xC7:
            try cmpxchg8b(d)
        case 0xC8...0xCF:
            r[Int(op & 7)] = r[Int(op & 7)].byteSwapped
        default:
            // MMX/SSE space: #UD with CR0.EM, #NM with CR0.TS, otherwise #UD (not supported).
            if sys.cr0 & CR0.em != 0 { throw .ud }
            if sys.cr0 & CR0.ts != 0 { throw .nm }
            throw .ud
        }
    }

    func cpuid() {
        switch r[0] {
        case 0:
            // "VMMHarness32" in EBX, EDX, ECX.
            r[0] = 1
            r[3] = 0x484D_4D56  // "VMMH"
            r[2] = 0x656E_7261  // "arne"
            r[1] = 0x3233_7373  // "ss32"
        case 1:
            r[0] = 0x0000_0500  // family 5, model 0, stepping 0
            r[3] = 0
            r[1] = 0
            r[2] = (1 << 3) | (1 << 4) | (1 << 8)  // PSE, TSC, CX8
        default:
            r[0] = 0; r[1] = 0; r[2] = 0; r[3] = 0
        }
    }

    func bitTest(_ d: DI, _ op: UInt8) throws(Fault) {
        let s = d.operandSize
        let bits = UInt32(s) * 8
        var kind = op
        var bitOff: UInt32
        var addrAdjust: UInt32 = 0
        if op == 0xBA {
            kind = [0xA3, 0xAB, 0xB3, 0xBB][Int(d.reg & 3)]
            bitOff = d.immediate & (bits - 1)
        } else {
            let raw = getReg(s, d.reg)
            if d.isMemory {
                let signed = Int32(bitPattern: signExtend(raw, s))
                addrAdjust = UInt32(bitPattern: (signed >> (s == 4 ? 5 : 4)) &* Int32(s))
            }
            bitOff = raw & (bits - 1)
        }
        let mask: UInt32 = 1 << bitOff
        let writes = kind != 0xA3
        materialize()
        if !d.isMemory {
            let v = getReg(s, d.rm)
            if v & mask != 0 { flags |= EFlags.cf } else { flags &= ~EFlags.cf }
            switch kind {
            case 0xAB: setReg(s, d.rm, v | mask)
            case 0xB3: setReg(s, d.rm, v & ~mask)
            case 0xBB: setReg(s, d.rm, v ^ mask)
            default: break
            }
            return
        }
        var ea = effectiveAddress(d) &+ addrAdjust
        if !d.address32 { ea &= 0xFFFF }
        let user = cpl == 3
        let v: UInt32
        let lin: UInt32
        if writes {
            lin = try rmwLinearAt(d.segment, ea, s)
            v = try readLin(lin, s, user: user)
        } else {
            lin = 0
            v = try read(d.segment, ea, s)
        }
        let newV: UInt32
        switch kind {
        case 0xAB: newV = v | mask
        case 0xB3: newV = v & ~mask
        case 0xBB: newV = v ^ mask
        default: newV = v
        }
        if writes { try writeLin(lin, s, newV, user: user) }
        if v & mask != 0 { flags |= EFlags.cf } else { flags &= ~EFlags.cf }
    }

    func cmpxchg8b(_ d: DI) throws(Fault) {
        let ea = effectiveAddress(d)
        let hiOff = d.address32 ? ea &+ 4 : (ea &+ 4) & 0xFFFF
        _ = try probeWrite(d.segment, ea, 4)
        _ = try probeWrite(d.segment, hiOff, 4)
        let lo = try read(d.segment, ea, 4)
        let hi = try read(d.segment, hiOff, 4)
        materialize()
        if lo == r[0] && hi == r[2] {
            try write(d.segment, ea, 4, r[3])
            try write(d.segment, hiOff, 4, r[1])
            flags |= EFlags.zf
        } else {
            try write(d.segment, ea, 4, lo)
            try write(d.segment, hiOff, 4, hi)
            r[0] = lo
            r[2] = hi
            flags &= ~EFlags.zf
        }
    }

    func group6(_ d: DI) throws(Fault) {
        // SLDT, STR, LLDT, LTR, VERR, VERW are not recognized in V86 mode (SDM vol. 2): #UD.
        if v86 { throw .ud }
        switch d.reg {
        case 0, 1:
            let v = UInt32(d.reg == 0 ? sys.ldtr.selector : sys.tr.selector)
            if d.isMemory { try writeRM(d, 2, v) } else { setReg(d.operandSize, d.rm, v) }
        case 2:
            try requireCPL0()
            let sel = UInt16(truncatingIfNeeded: try readRM(d, 2))
            if sel & 0xFFFC == 0 {
                sys.ldtr = SegmentRegister(selector: sel, unusable: true)
                return
            }
            let code = UInt32(sel & 0xFFFC)
            if sel & 4 != 0 { throw .gp(code) }
            let desc = try readDescriptor(sel)
            if desc.isCodeOrData || desc.type != 2 { throw .gp(code) }
            if !desc.present { throw .np(code) }
            sys.ldtr = desc.segmentRegister(selector: sel)
        case 3:
            try requireCPL0()
            let sel = UInt16(truncatingIfNeeded: try readRM(d, 2))
            let code = UInt32(sel & 0xFFFC)
            if sel & 0xFFFC == 0 { throw .gp(0) }
            if sel & 4 != 0 { throw .gp(code) }
            let desc = try readDescriptor(sel)
            if desc.isCodeOrData || (desc.type != 9 && desc.type != 1) { throw .gp(code) }
            if !desc.present { throw .np(code) }
            // Mark the TSS busy in the GDT.
            let at = sys.gdtr.base &+ UInt32(sel & 0xFFF8) &+ 5
            let b = try readSys(at, 1)
            try writeSys(at, 1, b | 2)
            var tr = desc.segmentRegister(selector: sel)
            tr.type |= 2
            sys.tr = tr
        case 4, 5:
            let sel = UInt16(truncatingIfNeeded: try readRM(d, 2))
            materialize()
            var ok = false
            if sel & 0xFFFC != 0, let desc = try? readDescriptor(sel), desc.isCodeOrData {
                let isCode = desc.type & 8 != 0
                let conforming = isCode && desc.type & 4 != 0
                let privOK = conforming || (desc.dpl >= cpl && desc.dpl >= UInt8(sel & 3))
                if d.reg == 4 {
                    ok = privOK && (!isCode || desc.type & 2 != 0)
                } else {
                    ok = privOK && !isCode && desc.type & 2 != 0
                }
            }
            if ok { flags |= EFlags.zf } else { flags &= ~EFlags.zf }
        default:
            throw .ud
        }
    }

    func group7(_ d: DI) throws(Fault) {
        switch d.reg {
        case 0, 1:
            let t = d.reg == 0 ? sys.gdtr : sys.idtr
            let ea = effectiveAddress(d)
            try write(d.segment, ea, 2, UInt32(t.limit))
            let base = d.operandSize == 2 ? t.base & 0x00FF_FFFF : t.base
            try write(d.segment, d.address32 ? ea &+ 2 : (ea &+ 2) & 0xFFFF, 4, base)
        case 2, 3:
            try requireCPL0()
            let ea = effectiveAddress(d)
            let limit = try read(d.segment, ea, 2)
            var base = try read(d.segment, d.address32 ? ea &+ 2 : (ea &+ 2) & 0xFFFF, 4)
            if d.operandSize == 2 { base &= 0x00FF_FFFF }
            let t = TableRegister(base: base, limit: UInt16(truncatingIfNeeded: limit))
            if d.reg == 2 { sys.gdtr = t } else { sys.idtr = t }
        case 4:
            if d.isMemory { try writeRM(d, 2, sys.cr0 & 0xFFFF) } else { setReg(d.operandSize, d.rm, sys.cr0) }
        case 6:
            try requireCPL0()
            let v = try readRM(d, 2) & 0xF
            // LMSW cannot clear PE.
            sys.cr0 = (sys.cr0 & ~UInt32(0xE)) | v | (sys.cr0 & CR0.pe)
            controlChanged()
        case 7:
            try requireCPL0()
            let lin = seg[Int(d.segment % 6)].base &+ effectiveAddress(d)
            let e = tlb + Int((lin >> 12) & UInt32(Interpreter.tlbSize - 1))
            if e.pointee.vpn == lin >> 12 { e.pointee.vpn = .max }
        default:
            throw .ud
        }
    }

    func larLsl(_ d: DI, lsl: Bool) throws(Fault) {
        if v86 { throw .ud }  // LAR/LSL are not recognized in V86 mode (SDM vol. 2)
        let sel = UInt16(truncatingIfNeeded: try readRM(d, 2))
        materialize()
        guard sel & 0xFFFC != 0, let desc = try? readDescriptor(sel) else {
            flags &= ~EFlags.zf
            return
        }
        var ok: Bool
        if desc.isCodeOrData {
            let conforming = desc.type & 0xC == 0xC
            ok = conforming || (desc.dpl >= cpl && desc.dpl >= UInt8(sel & 3))
        } else {
            let validTypes: Set<UInt8> = lsl ? [1, 2, 3, 9, 11] : [1, 2, 3, 4, 5, 9, 11, 12]
            ok = validTypes.contains(desc.type) && desc.dpl >= cpl && desc.dpl >= UInt8(sel & 3)
        }
        if !ok {
            flags &= ~EFlags.zf
            return
        }
        flags |= EFlags.zf
        let v: UInt32 = lsl ? desc.limit : UInt32(truncatingIfNeeded: desc.raw >> 32) & 0x00FF_FF00  // bits 19:16 as hardware returns them
        setReg(d.operandSize, d.reg, v)
    }
}
