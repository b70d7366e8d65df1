/// Lazy arithmetic flags and the ALU (SDM vol. 1, 3.4.3 and appendix A "EFLAGS cross-reference").
///
/// After ADD/ADC/SUB/SBB/logic/INC/DEC the interpreter keeps the result, the operands and the
/// operation (`lop`), and computes CF/PF/AF/ZF/SF/OF only when something reads them.
enum LazyOp {
    static let none: UInt8 = 0
    static let add: UInt8 = 1
    static let adc: UInt8 = 2
    static let sub: UInt8 = 3
    static let sbb: UInt8 = 4
    static let logic: UInt8 = 5
    static let inc: UInt8 = 6
    static let dec: UInt8 = 7
}

@inline(__always) func signBit(_ s: UInt8) -> UInt32 { s == 4 ? 0x8000_0000 : (s == 2 ? 0x8000 : 0x80) }
@inline(__always) func sizeMask(_ s: UInt8) -> UInt32 { s == 4 ? 0xFFFF_FFFF : (s == 2 ? 0xFFFF : 0xFF) }
@inline(__always) func signExtend(_ v: UInt32, _ s: UInt8) -> UInt32 {
    s == 4 ? v : (s == 2 ? UInt32(bitPattern: Int32(Int16(truncatingIfNeeded: v))) : UInt32(bitPattern: Int32(Int8(truncatingIfNeeded: v))))
}
@inline(__always) func parityEven(_ v: UInt32) -> Bool { (v & 0xFF).nonzeroBitCount & 1 == 0 }

let arithMask: UInt32 = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.of

extension Interpreter {
    /// EFLAGS with the arithmetic bits computed.
    var eflags: UInt32 {
        get {
            if lop == LazyOp.none { return flags }
            return (flags & ~arithMask) | lazyArith()
        }
        set {
            flags = newValue | 2
            lop = LazyOp.none
        }
    }

    func lazyArith() -> UInt32 {
        var f: UInt32 = 0
        if cfLazy() { f |= EFlags.cf }
        if parityEven(lres) { f |= EFlags.pf }
        if lop != LazyOp.logic && (la ^ lb ^ lres) & 0x10 != 0 { f |= EFlags.af }
        if lres == 0 { f |= EFlags.zf }
        if lres & signBit(lsize) != 0 { f |= EFlags.sf }
        if ofLazy() { f |= EFlags.of }
        return f
    }

    @inline(__always) func cfLazy() -> Bool {
        switch lop {
        case LazyOp.add: return lres < la
        case LazyOp.adc: return lcin != 0 ? lres <= la : lres < la
        case LazyOp.sub: return la < lb
        case LazyOp.sbb: return lcin != 0 ? la <= lb : la < lb
        case LazyOp.logic: return false
        default: return flags & EFlags.cf != 0
        }
    }

    @inline(__always) func ofLazy() -> Bool {
        let sb = signBit(lsize)
        switch lop {
        case LazyOp.add, LazyOp.adc, LazyOp.inc: return (la ^ lres) & (lb ^ lres) & sb != 0
        case LazyOp.sub, LazyOp.sbb, LazyOp.dec: return (la ^ lb) & (la ^ lres) & sb != 0
        default: return false
        }
    }

    /// Writes all arithmetic flags into `flags` and ends the lazy state.
    @inline(__always) func materialize() {
        if lop != LazyOp.none {
            flags = (flags & ~arithMask) | lazyArith()
            lop = LazyOp.none
        }
    }

    @inline(__always) var cf: Bool { lop == LazyOp.none ? flags & EFlags.cf != 0 : cfLazy() }
    @inline(__always) var zf: Bool { lop == LazyOp.none ? flags & EFlags.zf != 0 : lres == 0 }
    @inline(__always) var sf: Bool { lop == LazyOp.none ? flags & EFlags.sf != 0 : lres & signBit(lsize) != 0 }
    @inline(__always) var of: Bool { lop == LazyOp.none ? flags & EFlags.of != 0 : ofLazy() }
    @inline(__always) var pf: Bool { lop == LazyOp.none ? flags & EFlags.pf != 0 : parityEven(lres) }

    /// Condition code `cc` (0 = O ... 15 = NLE), SDM vol. 2 appendix B.1.4.7.
    @inline(__always) func condition(_ cc: UInt8) -> Bool {
        let v: Bool
        switch cc >> 1 {
        case 0: v = of
        case 1: v = cf
        case 2: v = zf
        case 3: v = cf || zf
        case 4: v = sf
        case 5: v = pf
        case 6: v = sf != of
        default: v = zf || (sf != of)
        }
        return cc & 1 == 0 ? v : !v
    }

    /// Sets the arithmetic flags eagerly (for shifts, multiplies, BCD ...).
    @inline(__always) func setArith(_ f: UInt32) {
        materialize()
        flags = (flags & ~arithMask) | (f & arithMask)
    }

    /// Flags of a result for SF/ZF/PF (used by eager operations).
    @inline(__always) func szp(_ res: UInt32, _ s: UInt8) -> UInt32 {
        var f: UInt32 = 0
        if res & sizeMask(s) == 0 { f |= EFlags.zf }
        if res & signBit(s) != 0 { f |= EFlags.sf }
        if parityEven(res) { f |= EFlags.pf }
        return f
    }

    /// The eight classic ALU operations (ADD OR ADC SBB AND SUB XOR CMP by ModRM.reg number).
    /// Returns the result; sets the lazy flags.
    @inline(__always) func alu(_ op: UInt8, _ a: UInt32, _ b: UInt32, _ s: UInt8) -> UInt32 {
        let m = sizeMask(s)
        let res: UInt32
        switch op & 7 {
        case 0: res = (a &+ b) & m; lop = LazyOp.add
        case 1: res = a | b; lop = LazyOp.logic
        case 2:
            let c: UInt32 = cf ? 1 : 0
            res = (a &+ b &+ c) & m; lcin = c; lop = LazyOp.adc
        case 3:
            let c: UInt32 = cf ? 1 : 0
            res = (a &- b &- c) & m; lcin = c; lop = LazyOp.sbb
        case 4: res = a & b; lop = LazyOp.logic
        case 6: res = a ^ b; lop = LazyOp.logic
        default: res = (a &- b) & m; lop = LazyOp.sub  // SUB and CMP
        }
        la = a; lb = b; lres = res; lsize = s
        return res
    }

    @inline(__always) func incdec(_ a: UInt32, _ s: UInt8, dec: Bool) -> UInt32 {
        // CF is preserved: fold the current CF into `flags` before switching the lazy op.
        if lop != LazyOp.none {
            let c = cfLazy()
            flags = c ? flags | EFlags.cf : flags & ~EFlags.cf
        }
        let res = (dec ? a &- 1 : a &+ 1) & sizeMask(s)
        la = a; lb = 1; lres = res; lsize = s
        lop = dec ? LazyOp.dec : LazyOp.inc
        return res
    }

    /// Shifts and rotates (group 2, ModRM.reg: ROL ROR RCL RCR SHL SHR SAL SAR).
    /// `count` is already masked to 5 bits. A zero count changes nothing, flags included.
    func shift(_ op: UInt8, _ a: UInt32, _ countIn: UInt32, _ s: UInt8) -> UInt32 {
        let count = countIn & 0x1F
        if count == 0 { return a }
        let bits = UInt32(s) * 8
        let m = sizeMask(s)
        let sb = signBit(s)
        materialize()
        var f = flags & arithMask
        var res: UInt32
        switch op & 7 {
        case 0:  // ROL
            let n = count % bits
            res = n == 0 ? a : ((a << n) | (a >> (bits - n))) & m
            let c = res & 1 != 0
            f = (f & ~(EFlags.cf | EFlags.of)) | (c ? EFlags.cf : 0)
            if ((res & sb) != 0) != c { f |= EFlags.of }
        case 1:  // ROR
            let n = count % bits
            res = n == 0 ? a : ((a >> n) | (a << (bits - n))) & m
            let c = res & sb != 0
            f = (f & ~(EFlags.cf | EFlags.of)) | (c ? EFlags.cf : 0)
            if ((res ^ (res << 1)) & sb) != 0 { f |= EFlags.of }
        case 2:  // RCL
            let n = count % (bits + 1)
            var v = UInt64(a) | (f & EFlags.cf != 0 ? UInt64(1) << UInt64(bits) : 0)
            let width = UInt64(bits + 1)
            if n != 0 { v = ((v << UInt64(n)) | (v >> (width - UInt64(n)))) & ((1 << width) - 1) }
            res = UInt32(truncatingIfNeeded: v) & m
            let c = (v >> UInt64(bits)) & 1 != 0
            f = (f & ~(EFlags.cf | EFlags.of)) | (c ? EFlags.cf : 0)
            if ((res & sb) != 0) != c { f |= EFlags.of }
        case 3:  // RCR
            let n = count % (bits + 1)
            var v = UInt64(a) | (f & EFlags.cf != 0 ? UInt64(1) << UInt64(bits) : 0)
            let width = UInt64(bits + 1)
            if n != 0 { v = ((v >> UInt64(n)) | (v << (width - UInt64(n)))) & ((1 << width) - 1) }
            res = UInt32(truncatingIfNeeded: v) & m
            let c = (v >> UInt64(bits)) & 1 != 0
            f = (f & ~(EFlags.cf | EFlags.of)) | (c ? EFlags.cf : 0)
            if ((res ^ (res << 1)) & sb) != 0 { f |= EFlags.of }
        case 4, 6:  // SHL/SAL
            let wide = UInt64(a) << UInt64(count)
            res = UInt32(truncatingIfNeeded: wide) & m
            let c = count <= bits ? (wide >> UInt64(bits)) & 1 != 0 : false
            f = szp(res, s) | (c ? EFlags.cf : 0)
            if ((res & sb) != 0) != c { f |= EFlags.of }
        case 5:  // SHR
            res = count >= 32 ? 0 : (a & m) >> count
            let c = count <= 32 ? ((UInt64(a & m) >> UInt64(count - 1)) & 1) != 0 : false
            f = szp(res, s) | (c ? EFlags.cf : 0)
            if count == 1 && a & sb != 0 { f |= EFlags.of }
        default:  // SAR
            let sv = Int64(Int32(bitPattern: signExtend(a, s)))
            res = UInt32(truncatingIfNeeded: sv >> Int64(count)) & m
            let c = (sv >> Int64(count - 1)) & 1 != 0
            f = szp(res, s) | (c ? EFlags.cf : 0)
        }
        flags = (flags & ~arithMask) | f
        return res
    }

    /// SHLD/SHRD (count masked to 5 bits; counts above the operand size leave the result undefined,
    /// here computed as a 32/64-bit funnel shift).
    func shiftDouble(left: Bool, _ dst: UInt32, _ src: UInt32, _ countIn: UInt32, _ s: UInt8) -> UInt32 {
        let count = countIn & 0x1F
        if count == 0 { return dst }
        let bits = UInt64(s) * 8
        let m = UInt64(sizeMask(s))
        var res: UInt32
        var c: Bool
        if left {
            let v = ((UInt64(dst) & m) << bits) | (UInt64(src) & m)
            let shifted = v << UInt64(count)
            res = UInt32(truncatingIfNeeded: (shifted >> bits) & m)
            c = (v >> (2 * bits - UInt64(count))) & 1 != 0
        } else {
            let v = ((UInt64(src) & m) << bits) | (UInt64(dst) & m)
            res = UInt32(truncatingIfNeeded: (v >> UInt64(count)) & m)
            c = (v >> UInt64(count - 1)) & 1 != 0
        }
        var f = szp(res, s) | (c ? EFlags.cf : 0)
        if (res ^ dst) & signBit(s) != 0 { f |= EFlags.of }
        setArith(f)
        return res
    }
}
