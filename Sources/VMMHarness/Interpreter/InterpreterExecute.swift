/// The executor for one-byte opcodes (SDM vol. 2, appendix A, table A-2). EIP is set past the
/// instruction before the handler runs; a fault resets it to the instruction (in `stepOne`).
extension Interpreter {
    @inline(__always)
    func execute(_ d: DI) throws(Fault) {
        eip = eip &+ UInt32(d.length)
        if csKind == 1 { eip &= 0xFFFF }
        if d.opcode < 0x100 {
            try execOneByte(d)
        } else {
            try execTwoByte(d)
        }
    }

    /// Near jump target check: truncation for 16-bit operand size, CS limit (#GP(0)).
    @inline(__always)
    func jump(_ target: UInt32, _ d: DI) throws(Fault) {
        let t = d.operandSize == 2 ? target & 0xFFFF : target
        if !csFlat && t > csLimit { throw .gp(0) }
        eip = t
    }

    @inline(__always)
    var iopl: UInt8 { UInt8((flags >> 12) & 3) }

    /// Locates a read-modify-write memory operand and checks that both the read and the write
    /// succeed before anything changes. Returns the linear address.
    @inline(__always)
    func rmwLinear(_ d: DI, _ size: UInt8) throws(Fault) -> UInt32 {
        try rmwLinearAt(d.segment, effectiveAddress(d), size)
    }

    @inline(__always)
    func rmwLinearAt(_ segment: UInt8, _ ea: UInt32, _ size: UInt8) throws(Fault) -> UInt32 {
        let lin = try linear(segment, ea, size, write: true)
        let user = cpl == 3
        if paging {
            let p = try translate(lin, write: true, user: user)
            try physCheck(p, (lin & 0xFFF) + UInt32(size) <= 0x1000 ? size : 1, write: false, data: 0)
            if (lin & 0xFFF) + UInt32(size) > 0x1000 {
                let p1 = try translate((lin | 0xFFF) &+ 1, write: true, user: user)
                try physCheck(p1, 1, write: false, data: 0)
            }
        } else {
            try physCheck(lin, size, write: false, data: 0)
        }
        return lin
    }

    @inline(__always)
    func execOneByte(_ d: DI) throws(Fault) {
        let op = UInt8(truncatingIfNeeded: d.opcode)
        switch op {
        case 0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31, 0x38, 0x39:
            let aop = op >> 3
            let s = d.size
            let b = getReg(s, d.reg)
            if !d.isMemory {
                let res = alu(aop, getReg(s, d.rm), b, s)
                if aop != 7 { setReg(s, d.rm, res) }
            } else if aop == 7 {
                _ = alu(aop, try read(d.segment, effectiveAddress(d), s), b, s)
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = alu(aop, try readLin(lin, s, user: user), b, s)
                try writeLin(lin, s, res, user: user)
            }
        case 0x02, 0x03, 0x0A, 0x0B, 0x12, 0x13, 0x1A, 0x1B, 0x22, 0x23, 0x2A, 0x2B, 0x32, 0x33, 0x3A, 0x3B:
            let aop = op >> 3
            let s = d.size
            let b = try readRM(d, s)
            let res = alu(aop, getReg(s, d.reg), b, s)
            if aop != 7 { setReg(s, d.reg, res) }
        case 0x04, 0x05, 0x0C, 0x0D, 0x14, 0x15, 0x1C, 0x1D, 0x24, 0x25, 0x2C, 0x2D, 0x34, 0x35, 0x3C, 0x3D:
            let aop = op >> 3
            let s = d.size
            let res = alu(aop, getReg(s, 0), d.immediate, s)
            if aop != 7 { setReg(s, 0, res) }
        case 0x06, 0x0E, 0x16, 0x1E:
            try push(UInt32(seg[Int(op >> 3)].selector), d.operandSize)
        case 0x07, 0x17, 0x1F:
            var sp = r[4]
            let v = try popLocal(&sp, d.operandSize)
            try loadDataSegment(op >> 3, UInt16(truncatingIfNeeded: v))
            r[4] = sp
            if op == 0x17 { shadowEnd = instructionsExecuted &+ 2 }
        case 0x27, 0x2F, 0x37, 0x3F:
            bcd(op)
        case 0x40...0x47:
            let s = d.operandSize
            setReg(s, op & 7, incdec(getReg(s, op & 7), s, dec: false))
        case 0x48...0x4F:
            let s = d.operandSize
            setReg(s, op & 7, incdec(getReg(s, op & 7), s, dec: true))
        case 0x50...0x57:
            try push(getReg(d.operandSize, op & 7), d.operandSize)
        case 0x58...0x5F:
            let v = try pop(d.operandSize)
            setReg(d.operandSize, op & 7, v)
        case 0x60:
            let s = d.operandSize
            var sp = r[4]
            let orig = getReg(s, 4)
            for i in UInt8(0)..<8 { try pushLocal(&sp, i == 4 ? orig : getReg(s, i), s) }
            r[4] = sp
        case 0x61:
            let s = d.operandSize
            var sp = r[4]
            var v: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0, 0, 0, 0, 0)
            v.7 = try popLocal(&sp, s)
            v.6 = try popLocal(&sp, s)
            v.5 = try popLocal(&sp, s)
            _ = try popLocal(&sp, s)
            v.3 = try popLocal(&sp, s)
            v.2 = try popLocal(&sp, s)
            v.1 = try popLocal(&sp, s)
            v.0 = try popLocal(&sp, s)
            setReg(s, 7, v.7); setReg(s, 6, v.6); setReg(s, 5, v.5); setReg(s, 3, v.3)
            setReg(s, 2, v.2); setReg(s, 1, v.1); setReg(s, 0, v.0)
            r[4] = sp
        case 0x62:
            let s = d.operandSize
            let ea = effectiveAddress(d)
            let lo = signExtend(try read(d.segment, ea, s), s)
            let hi = signExtend(try read(d.segment, d.address32 ? ea &+ UInt32(s) : (ea &+ UInt32(s)) & 0xFFFF, s), s)
            let idx = Int32(bitPattern: signExtend(getReg(s, d.reg), s))
            if idx < Int32(bitPattern: lo) || idx > Int32(bitPattern: hi) {
                throw .exception(X86Exception(vector: 5))
            }
        case 0x63:  // ARPL r/m16, r16 (#UD in V86 mode)
            if v86 { throw .ud }
            let dst = try readRM(d, 2)
            let src = getReg(2, d.reg)
            materialize()
            if dst & 3 < src & 3 {
                try writeRM(d, 2, (dst & ~3) | (src & 3))
                flags |= EFlags.zf
            } else {
                flags &= ~EFlags.zf
            }
        case 0x68:
            try push(d.immediate, d.operandSize)
        case 0x6A:
            try push(signExtend(d.immediate, 1) & sizeMask(d.operandSize), d.operandSize)
        case 0x69, 0x6B:
            let s = d.operandSize
            let imm = op == 0x6B ? signExtend(d.immediate, 1) : signExtend(d.immediate, s)
            let res = imul2(try readRM(d, s), imm, s)
            setReg(s, d.reg, res)
        case 0x6C, 0x6D:
            try inString(d)
        case 0x6E, 0x6F:
            try outString(d)
        case 0x70...0x7F:
            if condition(op & 0xF) { try jump(eip &+ signExtend(d.immediate, 1), d) }
        case 0x80...0x83:
            let s = d.size
            let imm = op == 0x81 ? d.immediate : signExtend(d.immediate, 1) & sizeMask(s)
            let aop = d.reg
            if !d.isMemory {
                let res = alu(aop, getReg(s, d.rm), imm, s)
                if aop != 7 { setReg(s, d.rm, res) }
            } else if aop == 7 {
                _ = alu(aop, try read(d.segment, effectiveAddress(d), s), imm, s)
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = alu(aop, try readLin(lin, s, user: user), imm, s)
                try writeLin(lin, s, res, user: user)
            }
        case 0x84, 0x85:
            let s = d.size
            _ = alu(4, try readRM(d, s), getReg(s, d.reg), s)
        case 0x86, 0x87:
            let s = d.size
            if !d.isMemory {
                let a = getReg(s, d.rm)
                setReg(s, d.rm, getReg(s, d.reg))
                setReg(s, d.reg, a)
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let a = try readLin(lin, s, user: user)
                try writeLin(lin, s, getReg(s, d.reg), user: user)
                setReg(s, d.reg, a)
            }
        case 0x88, 0x89:
            try writeRM(d, d.size, getReg(d.size, d.reg))
        case 0x8A, 0x8B:
            setReg(d.size, d.reg, try readRM(d, d.size))
        case 0x8C:
            let v = UInt32(seg[Int(d.reg % 6)].selector)
            if d.isMemory { try writeRM(d, 2, v) } else { setReg(d.operandSize, d.rm, v) }
        case 0x8D:
            setReg(d.operandSize, d.reg, effectiveAddress(d))
        case 0x8E:
            let v = try readRM(d, 2)
            try loadDataSegment(d.reg, UInt16(truncatingIfNeeded: v))
            if d.reg == SegmentIndex.ss { shadowEnd = instructionsExecuted &+ 2 }
        case 0x8F:
            // POP r/m: the address is computed with ESP already incremented.
            let s = d.operandSize
            var sp = r[4]
            let v = try popLocal(&sp, s)
            if d.isMemory {
                let old = r[4]
                r[4] = sp
                do throws(Fault) { try writeRM(d, s, v) } catch { r[4] = old; throw error }
            } else {
                r[4] = sp
                setReg(s, d.rm, v)
            }
        case 0x90:
            break  // NOP, PAUSE
        case 0x91...0x97:
            let s = d.operandSize
            let a = getReg(s, 0)
            setReg(s, 0, getReg(s, op & 7))
            setReg(s, op & 7, a)
        case 0x98:
            if d.operandSize == 4 { r[0] = signExtend(r[0], 2) } else { setReg(2, 0, signExtend(r[0], 1)) }
        case 0x99:
            if d.operandSize == 4 {
                r[2] = r[0] & 0x8000_0000 != 0 ? 0xFFFF_FFFF : 0
            } else {
                setReg(2, 2, r[0] & 0x8000 != 0 ? 0xFFFF : 0)
            }
        case 0x9A:
            try farCall(selector: UInt16(truncatingIfNeeded: d.immediate2), offset: d.immediate, d)
        case 0x9B:
            if sys.cr0 & (CR0.ts | CR0.mp) == (CR0.ts | CR0.mp) { throw .nm }
        case 0x9C:
            // PUSHF/POPF are IOPL-sensitive in V86 mode (SDM vol. 3A, 20.2.7; no VME).
            if v86 && iopl < 3 { throw .gp(0) }
            try pushFlags(d.operandSize)
        case 0x9D:
            if v86 && iopl < 3 { throw .gp(0) }
            try popFlags(d.operandSize)
        case 0x9E:
            let ah = (r[0] >> 8) & 0xFF
            materialize()
            let m = EFlags.sf | EFlags.zf | EFlags.af | EFlags.pf | EFlags.cf
            flags = (flags & ~m) | (ah & m)
        case 0x9F:
            let f = (eflags & 0xD5) | 2
            setReg(1, 4, f)
        case 0xA0, 0xA1:
            setReg(d.size, 0, try read(d.segment, d.displacement, d.size))
        case 0xA2, 0xA3:
            try write(d.segment, d.displacement, d.size, getReg(d.size, 0))
        case 0xA4...0xA7, 0xAA...0xAF:
            try stringOp(d, op)
        case 0xA8, 0xA9:
            _ = alu(4, getReg(d.size, 0), d.immediate, d.size)
        case 0xB0...0xB7:
            setReg(1, op & 7, d.immediate)
        case 0xB8...0xBF:
            setReg(d.operandSize, op & 7, d.immediate)
        case 0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3:
            let s = d.size
            let count: UInt32 = op <= 0xC1 ? d.immediate & 0x1F : (op <= 0xD1 ? 1 : r[1] & 0x1F)
            if !d.isMemory {
                setReg(s, d.rm, shift(d.reg, getReg(s, d.rm), count, s))
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = shift(d.reg, try readLin(lin, s, user: user), count, s)
                try writeLin(lin, s, res, user: user)
            }
        case 0xC2, 0xC3:
            var sp = r[4]
            let t = try popLocal(&sp, d.operandSize)
            try jump(t, d)
            if op == 0xC2 {
                sp = stackBig ? sp &+ d.immediate : (sp & 0xFFFF_0000) | ((sp &+ d.immediate) & 0xFFFF)
            }
            r[4] = sp
        case 0xC4, 0xC5:
            try loadFarPointer(d, segment: op == 0xC4 ? SegmentIndex.es : SegmentIndex.ds)
        case 0xC6, 0xC7:
            try writeRM(d, d.size, d.immediate)
        case 0xC8:
            try enter(d)
        case 0xC9:
            let s = d.operandSize
            var sp = stackBig ? r[5] : (r[4] & 0xFFFF_0000) | (r[5] & 0xFFFF)
            let v = try popLocal(&sp, s)
            r[4] = sp
            setReg(s, 5, v)
        case 0xCA, 0xCB:
            try farReturn(d, extra: op == 0xCA ? d.immediate : 0)
        case 0xCC:
            try softwareInterrupt(3, d)
        case 0xCD:
            // INT n from V86 mode with IOPL < 3 is #GP(0), not delivered through the gate (SDM
            // vol. 3A, 20.3.1.1 and table 20-2, no VME). INT3/INTO/INT1 are not IOPL-sensitive.
            if v86 && iopl < 3 { throw .gp(0) }
            try softwareInterrupt(UInt8(truncatingIfNeeded: d.immediate), d)
        case 0xCE:
            if of { try softwareInterrupt(4, d) }
        case 0xCF:
            try iret(d)
        case 0xD4:
            let base = d.immediate & 0xFF
            if base == 0 { throw .de }
            let al = r[0] & 0xFF
            let res = ((al / base) << 8) | (al % base)
            setReg(2, 0, res)
            setArith(szp(res & 0xFF, 1))
        case 0xD5:
            let al = ((r[0] & 0xFF) &+ ((r[0] >> 8) & 0xFF) &* (d.immediate & 0xFF)) & 0xFF
            setReg(2, 0, al)
            setArith(szp(al, 1))
        case 0xD7:
            let base = d.address32 ? r[3] : r[3] & 0xFFFF
            let a = base &+ (r[0] & 0xFF)
            setReg(1, 0, try read(d.segment, d.address32 ? a : a & 0xFFFF, 1))
        case 0xD8...0xDF:
            try x87(d)
        case 0xE0, 0xE1, 0xE2, 0xE3:
            let a32 = d.address32
            var cx = a32 ? r[1] : r[1] & 0xFFFF
            var take: Bool
            if op == 0xE3 {
                take = cx == 0
            } else {
                cx = a32 ? cx &- 1 : (cx &- 1) & 0xFFFF
                take = cx != 0
                if op == 0xE0 { take = take && !zf }
                if op == 0xE1 { take = take && zf }
            }
            if take { try jump(eip &+ signExtend(d.immediate, 1), d) }
            if op != 0xE3 { if a32 { r[1] = cx } else { setReg(2, 1, cx) } }
        case 0xE4, 0xE5, 0xEC, 0xED:
            let port = op <= 0xE5 ? UInt16(d.immediate & 0xFF) : UInt16(truncatingIfNeeded: r[2])
            try checkIOPermission(port: port, size: d.size)
            pendingIn = PendingIn(size: d.size, next: eip)
            throw .stop(.portIn(port: port, size: Int(d.size)))
        case 0xE6, 0xE7, 0xEE, 0xEF:
            let port = op <= 0xE7 ? UInt16(d.immediate & 0xFF) : UInt16(truncatingIfNeeded: r[2])
            try checkIOPermission(port: port, size: d.size)
            pendingStop = .portOut(port: port, size: Int(d.size), value: getReg(d.size, 0))
        case 0xE8:
            let t = eip &+ d.immediate
            var sp = r[4]
            let ret = eip
            try jump(t, d)
            try pushLocal(&sp, ret, d.operandSize)
            r[4] = sp
        case 0xE9:
            try jump(eip &+ d.immediate, d)
        case 0xEA:
            try farJump(selector: UInt16(truncatingIfNeeded: d.immediate2), offset: d.immediate, d)
        case 0xEB:
            try jump(eip &+ signExtend(d.immediate, 1), d)
        case 0xF1:
            // INT1 (ICEBP): #DB as a trap, without the gate DPL check.
            let tf = flags & EFlags.tf != 0
            try deliver(vector: 1, errorCode: nil, software: false, external: true, returnEIP: eip)
            if tf { suppressSingleStep = true }
        case 0xF4:
            if cpl != 0 { throw .gp(0) }
            pendingStop = .halt
        case 0xF5:
            materialize(); flags ^= EFlags.cf
        case 0xF6, 0xF7:
            try group3(d)
        case 0xF8:
            materialize(); flags &= ~EFlags.cf
        case 0xF9:
            materialize(); flags |= EFlags.cf
        case 0xFA:
            if cpl > iopl { throw .gp(0) }
            flags &= ~EFlags.if
        case 0xFB:
            if cpl > iopl { throw .gp(0) }
            if flags & EFlags.if == 0 { shadowEnd = instructionsExecuted &+ 2 }
            flags |= EFlags.if
        case 0xFC:
            flags &= ~EFlags.df
        case 0xFD:
            flags |= EFlags.df
        case 0xFE:
            let s = d.size
            if !d.isMemory {
                setReg(s, d.rm, incdec(getReg(s, d.rm), s, dec: d.reg == 1))
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = incdec(try readLin(lin, s, user: user), s, dec: d.reg == 1)
                try writeLin(lin, s, res, user: user)
            }
        case 0xFF:
            try group5(d)
        default:
            throw .ud
        }
    }

    func group5(_ d: DI) throws(Fault) {
        let s = d.operandSize
        switch d.reg {
        case 0, 1:
            if !d.isMemory {
                setReg(s, d.rm, incdec(getReg(s, d.rm), s, dec: d.reg == 1))
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let res = incdec(try readLin(lin, s, user: user), s, dec: d.reg == 1)
                try writeLin(lin, s, res, user: user)
            }
        case 2:
            let t = try readRM(d, s)
            var sp = r[4]
            let ret = eip
            try jump(t, d)
            try pushLocal(&sp, ret, s)
            r[4] = sp
        case 3, 5:
            let ea = effectiveAddress(d)
            let off = try read(d.segment, ea, s)
            let sel = try read(d.segment, d.address32 ? ea &+ UInt32(s) : (ea &+ UInt32(s)) & 0xFFFF, 2)
            if d.reg == 3 {
                try farCall(selector: UInt16(truncatingIfNeeded: sel), offset: off, d)
            } else {
                try farJump(selector: UInt16(truncatingIfNeeded: sel), offset: off, d)
            }
        case 4:
            try jump(try readRM(d, s), d)
        case 6:
            let v = try readRM(d, s)
            try push(v, s)
        default:
            throw .ud
        }
    }

    func group3(_ d: DI) throws(Fault) {
        let s = d.size
        switch d.reg {
        case 0, 1:
            _ = alu(4, try readRM(d, s), d.immediate, s)
        case 2, 3:
            if !d.isMemory {
                let a = getReg(s, d.rm)
                setReg(s, d.rm, d.reg == 2 ? ~a & sizeMask(s) : alu(5, 0, a, s))
            } else {
                let lin = try rmwLinear(d, s)
                let user = cpl == 3
                let a = try readLin(lin, s, user: user)
                let res = d.reg == 2 ? ~a & sizeMask(s) : alu(5, 0, a, s)
                try writeLin(lin, s, res, user: user)
            }
        case 4, 5:
            let src = try readRM(d, s)
            mulAcc(src, s, signed: d.reg == 5)
        default:
            let src = try readRM(d, s)
            try divAcc(src, s, signed: d.reg == 7)
        }
    }

    /// MUL/IMUL with one operand: AX/DX:AX/EDX:EAX = accumulator * src.
    func mulAcc(_ src: UInt32, _ s: UInt8, signed: Bool) {
        let a = getReg(s, 0)
        var overflow: Bool
        var lo: UInt32
        var hi: UInt32
        if signed {
            let p = Int64(Int32(bitPattern: signExtend(a, s))) &* Int64(Int32(bitPattern: signExtend(src, s)))
            let bits = Int64(s) * 8
            lo = UInt32(truncatingIfNeeded: p) & sizeMask(s)
            hi = UInt32(truncatingIfNeeded: p >> bits) & sizeMask(s)
            overflow = p != Int64(Int32(bitPattern: signExtend(lo, s)))
        } else {
            let p = UInt64(a) &* UInt64(src)
            let bits = UInt64(s) * 8
            lo = UInt32(truncatingIfNeeded: p) & sizeMask(s)
            hi = UInt32(truncatingIfNeeded: p >> bits) & sizeMask(s)
            overflow = hi != 0
        }
        switch s {
        case 1: setReg(2, 0, (hi << 8) | lo)
        case 2: setReg(2, 0, lo); setReg(2, 2, hi)
        default: r[0] = lo; r[2] = hi
        }
        setArith(szp(lo, s) | (overflow ? EFlags.cf | EFlags.of : 0))
    }

    /// IMUL with two/three operands: the truncated product; CF = OF = the product did not fit.
    func imul2(_ a: UInt32, _ b: UInt32, _ s: UInt8) -> UInt32 {
        let p = Int64(Int32(bitPattern: signExtend(a, s))) &* Int64(Int32(bitPattern: signExtend(b, s)))
        let res = UInt32(truncatingIfNeeded: p) & sizeMask(s)
        let overflow = p != Int64(Int32(bitPattern: signExtend(res, s)))
        setArith(szp(res, s) | (overflow ? EFlags.cf | EFlags.of : 0))
        return res
    }

    /// DIV/IDIV: #DE for a zero divisor or a quotient that does not fit.
    func divAcc(_ src: UInt32, _ s: UInt8, signed: Bool) throws(Fault) {
        let bits = UInt64(s) * 8
        let dividend: UInt64
        switch s {
        case 1: dividend = UInt64(r[0] & 0xFFFF)
        case 2: dividend = (UInt64(r[2] & 0xFFFF) << 16) | UInt64(r[0] & 0xFFFF)
        default: dividend = (UInt64(r[2]) << 32) | UInt64(r[0])
        }
        if src & sizeMask(s) == 0 { throw .de }
        var q: UInt32
        var rem: UInt32
        if signed {
            let n = Int64(bitPattern: dividend << (64 - 2 * bits)) >> Int64(64 - 2 * bits)
            let dv = Int64(Int32(bitPattern: signExtend(src, s)))
            let (qq, o) = n.dividedReportingOverflow(by: dv)
            if o { throw .de }
            let rr = n.remainderReportingOverflow(dividingBy: dv).partialValue
            let maxQ = Int64(1) << Int64(bits - 1)
            if qq >= maxQ || qq < -maxQ { throw .de }
            q = UInt32(truncatingIfNeeded: qq) & sizeMask(s)
            rem = UInt32(truncatingIfNeeded: rr) & sizeMask(s)
        } else {
            let dv = UInt64(src & sizeMask(s))
            let qq = dividend / dv
            if qq > UInt64(sizeMask(s)) { throw .de }
            q = UInt32(truncatingIfNeeded: qq)
            rem = UInt32(truncatingIfNeeded: dividend % dv)
        }
        switch s {
        case 1: setReg(2, 0, (rem << 8) | q)
        case 2: setReg(2, 0, q); setReg(2, 2, rem)
        default: r[0] = q; r[2] = rem
        }
    }

    /// DAA/DAS/AAA/AAS (SDM vol. 2 pseudocode).
    func bcd(_ op: UInt8) {
        materialize()
        var al = r[0] & 0xFF
        let oldAL = al
        let oldCF = flags & EFlags.cf != 0
        var f = flags & arithMask
        switch op {
        case 0x27, 0x2F:
            let sub = op == 0x2F
            var cfNew = false
            if (al & 0xF) > 9 || f & EFlags.af != 0 {
                al = (sub ? al &- 6 : al &+ 6) & 0xFF
                cfNew = oldCF || (sub ? oldAL < 6 : oldAL + 6 > 0xFF)
                f |= EFlags.af
            } else {
                f &= ~EFlags.af
            }
            if oldAL > 0x99 || oldCF {
                al = (sub ? al &- 0x60 : al &+ 0x60) & 0xFF
                cfNew = true
            }
            f = (f & EFlags.af) | szp(al, 1) | (cfNew ? EFlags.cf : 0)
            setReg(1, 0, al)
        default:
            let sub = op == 0x3F
            var ax = r[0] & 0xFFFF
            if (al & 0xF) > 9 || f & EFlags.af != 0 {
                ax = sub ? ((ax &- 6) & 0xFF) | ((((ax >> 8) &- 1) & 0xFF) << 8) : (ax &+ 0x106) & 0xFFFF
                f = EFlags.af | EFlags.cf
            } else {
                f = 0
            }
            al = ax & 0xF
            setReg(2, 0, (ax & 0xFF00) | al)
            f |= szp(al, 1) & ~(EFlags.zf | EFlags.sf | EFlags.pf)
        }
        flags = (flags & ~arithMask) | f
    }

    /// MOVS/CMPS/STOS/LODS/SCAS with optional REP/REPE/REPNE. Long repeats run in chunks of
    /// 1024 iterations and leave EIP at the instruction so it restarts (as hardware does at
    /// interrupt windows); registers are committed per iteration so a fault is restartable.
    func stringOp(_ d: DI, _ op: UInt8) throws(Fault) {
        let s = d.size
        let a32 = d.address32
        let delta: UInt32 = flags & EFlags.df != 0 ? 0 &- UInt32(s) : UInt32(s)
        let kind = op & 0xFE
        let compares = kind == 0xA6 || kind == 0xAE
        if d.rep == 0 {
            try stringIteration(d, kind, s, a32, delta)
            return
        }
        var n = 0
        while true {
            let cx = a32 ? r[1] : r[1] & 0xFFFF
            if cx == 0 { return }
            try stringIteration(d, kind, s, a32, delta)
            if a32 { r[1] = cx &- 1 } else { setReg(2, 1, cx &- 1) }
            if compares {
                if d.rep == 1 && !zf { return }
                if d.rep == 2 && zf { return }
            }
            n &+= 1
            if n >= 1024 {
                if (a32 ? r[1] : r[1] & 0xFFFF) != 0 { eip = startEIP }
                return
            }
        }
    }

    @inline(__always)
    func stringIteration(_ d: DI, _ kind: UInt8, _ s: UInt8, _ a32: Bool, _ delta: UInt32) throws(Fault) {
        let si = a32 ? r[6] : r[6] & 0xFFFF
        let di = a32 ? r[7] : r[7] & 0xFFFF
        switch kind {
        case 0xA4:
            let v = try read(d.segment, si, s)
            try write(SegmentIndex.es, di, s, v)
            advance(6, a32, delta)
            advance(7, a32, delta)
        case 0xA6:
            let a = try read(d.segment, si, s)
            let b = try read(SegmentIndex.es, di, s)
            _ = alu(7, a, b, s)
            advance(6, a32, delta)
            advance(7, a32, delta)
        case 0xAA:
            try write(SegmentIndex.es, di, s, getReg(s, 0))
            advance(7, a32, delta)
        case 0xAC:
            setReg(s, 0, try read(d.segment, si, s))
            advance(6, a32, delta)
        default:  // 0xAE SCAS
            let b = try read(SegmentIndex.es, di, s)
            _ = alu(7, getReg(s, 0), b, s)
            advance(7, a32, delta)
        }
    }

    @inline(__always)
    func advance(_ reg: Int, _ a32: Bool, _ delta: UInt32) {
        if a32 { r[reg] = r[reg] &+ delta } else { r[reg] = (r[reg] & 0xFFFF_0000) | ((r[reg] &+ delta) & 0xFFFF) }
    }

    func enter(_ d: DI) throws(Fault) {
        let s = d.operandSize
        let size = d.immediate & 0xFFFF
        let level = d.immediate2 & 31
        var sp = r[4]
        try pushLocal(&sp, getReg(s, 5), s)
        let frame = sp
        if level > 0 {
            var bp = r[5]
            if level > 1 {
                for _ in 1..<level {
                    bp = stackBig ? bp &- UInt32(s) : (bp & 0xFFFF_0000) | ((bp &- UInt32(s)) & 0xFFFF)
                    let v = try read(SegmentIndex.ss, stackBig ? bp : bp & 0xFFFF, s)
                    try pushLocal(&sp, v, s)
                }
            }
            try pushLocal(&sp, frame, s)
        }
        sp = stackBig ? sp &- size : (sp & 0xFFFF_0000) | ((sp &- size) & 0xFFFF)
        setReg(s, 5, frame)
        r[4] = sp
    }

    func pushFlags(_ s: UInt8) throws(Fault) {
        let f = eflags & ~(EFlags.vm | EFlags.rf)
        try push(f & sizeMask(s), s)
    }

    /// POPF/POPFD rules for protected mode (SDM vol. 2, POPF): CPL 0 changes everything but
    /// VM/VIP/VIF (RF cleared); otherwise IOPL is kept, and IF too when CPL > IOPL.
    func popFlags(_ s: UInt8) throws(Fault) {
        let v = try pop(s)
        let old = eflags
        var keep: UInt32 = EFlags.vm | EFlags.vip | EFlags.vif | 0xFFC0_0000 | (1 << 3) | (1 << 5) | (1 << 15)
        if cpl > 0 { keep |= EFlags.iopl }
        if cpl > iopl { keep |= EFlags.if }
        if s == 2 { keep |= 0xFFFF_0000 }
        var n = (old & keep) | (v & ~keep)
        n &= ~EFlags.rf
        eflags = n | 2
    }

    func x87(_ d: DI) throws(Fault) {
        if sys.cr0 & (CR0.em | CR0.ts) != 0 { throw .nm }
        let op = UInt8(truncatingIfNeeded: d.opcode)
        switch (op, d.isMemory, d.reg) {
        case (0xDB, false, 4) where d.rm == 3:  // FNINIT
            fpuStatus = 0
            fpuControl = 0x37F
        case (0xDF, false, 4) where d.rm == 0:  // FNSTSW AX
            setReg(2, 0, UInt32(fpuStatus))
        case (0xDD, true, 7):  // FNSTSW m16
            try write(d.segment, effectiveAddress(d), 2, UInt32(fpuStatus))
        case (0xD9, true, 7):  // FNSTCW m16
            try write(d.segment, effectiveAddress(d), 2, UInt32(fpuControl))
        case (0xD9, true, 5):  // FLDCW m16
            fpuControl = UInt16(truncatingIfNeeded: try read(d.segment, effectiveAddress(d), 2))
        default:
            throw .ud
        }
    }
}
