/// The fast path of the run loop: the most common 32-bit instructions (register and flat-memory
/// ALU, MOV, INC/DEC, Jcc, MOV r32,imm32) executed straight from the decode cache, without the
/// general fetch, the big opcode switch and the fault machinery.
///
/// Why it is sound:
/// - It only runs when the general path would do exactly the same thing: CS is flat and 32-bit,
///   paging is off (linear = physical), EFLAGS.TF is clear (no single-step trap to raise), and
///   the cached instruction's bytes still match memory (the same validation `fetch` does, so
///   self-modifying code and host writes are seen).
/// - A fast handler either completes the instruction or returns `false` before changing
///   anything; the caller then runs the general path on the same instruction. Every check that
///   could fault (segment type and limit via the flat masks, RAM bounds, alignment check) is done
///   up front, so there is never a partial effect to undo.
/// - Results and flags come from the same `alu`/`incdec` helpers as the general path, so the
///   lazy flags are identical.
enum FastKind {
    static let none: UInt8 = 0
    /// 01/09/11/19/21/29/31/39 with a register r/m: `op r/m32, r32`.
    static let aluRMReg: UInt8 = 1
    /// 03/0B/.../3B with a register r/m: `op r32, r/m32`.
    static let aluRegRM: UInt8 = 2
    /// 81 /x with a register r/m: `op r/m32, imm32`.
    static let aluRegImm32: UInt8 = 3
    /// 83 /x with a register r/m: `op r/m32, imm8` (sign-extended).
    static let aluRegImm8: UInt8 = 4
    /// 40+r / 48+r.
    static let inc: UInt8 = 5
    static let dec: UInt8 = 6
    /// 70–7F (rel8) and 0F 80–8F (rel32).
    static let jccRel8: UInt8 = 7
    static let jccRel32: UInt8 = 8
    /// 89 / 8B with a register r/m.
    static let movRMReg: UInt8 = 9
    static let movRegRM: UInt8 = 10
    /// 8B with a memory operand: `mov r32, [m]`.
    static let loadReg: UInt8 = 11
    /// 89 with a memory operand: `mov [m], r32`.
    static let storeReg: UInt8 = 12
    /// 03/0B/.../3B with a memory operand: `op r32, [m]`.
    static let aluRegMem: UInt8 = 13
    /// 01/09/.../39 with a memory operand: `op [m], r32`.
    static let aluMemReg: UInt8 = 14
    /// 81/83 with a memory operand: `op [m], imm`.
    static let aluMemImm32: UInt8 = 15
    static let aluMemImm8: UInt8 = 16
    /// B8+r: `mov r32, imm32`.
    static let movImm: UInt8 = 17
    /// 50+r, 6A, 68, 60: `push r32`, `push imm8`, `push imm32`, `pushad`.
    static let pushReg: UInt8 = 18
    static let pushImm8: UInt8 = 19
    static let pushImm32: UInt8 = 20
    static let pushAll: UInt8 = 21

    /// The fast kind of a decoded instruction, or `none`. Only 32-bit operand and address size,
    /// no byte forms.
    static func classify(_ d: DecodedInstruction) -> UInt8 {
        guard d.operandSize == 4 else { return none }
        if d.opcode >= 0x100 {
            return d.opcode >= 0x180 && d.opcode <= 0x18F ? jccRel32 : none
        }
        let op = UInt8(truncatingIfNeeded: d.opcode)
        if d.isMemory && !d.address32 { return none }
        switch op {
        case 0x01, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x39:
            return d.isMemory ? aluMemReg : aluRMReg
        case 0x03, 0x0B, 0x13, 0x1B, 0x23, 0x2B, 0x33, 0x3B:
            return d.isMemory ? aluRegMem : aluRegRM
        case 0x81: return d.isMemory ? aluMemImm32 : aluRegImm32
        case 0x83: return d.isMemory ? aluMemImm8 : aluRegImm8
        case 0x40...0x47: return inc
        case 0x48...0x4F: return dec
        case 0x70...0x7F: return jccRel8
        case 0x89: return d.isMemory ? storeReg : movRMReg
        case 0x8B: return d.isMemory ? loadReg : movRegRM
        case 0xB8...0xBF: return movImm
        case 0x50...0x57: return pushReg
        case 0x6A: return pushImm8
        case 0x68: return pushImm32
        case 0x60: return pushAll
        default: return none
        }
    }
}

extension Interpreter {
    /// Whether the fast path may run at all right now (see the type comment above).
    @inline(__always)
    var fastPathAllowed: Bool {
        csFlat && !paging && csKind == 2 && flags & EFlags.tf == 0
    }

    /// Looks up the instruction at EIP in the decode cache for the fast path (flat CS, no
    /// paging: EIP is the physical address). Returns the cache index on a validated hit, else -1.
    @inline(__always)
    func fastLookup(_ phys: UInt32) -> Int {
        guard UInt64(phys) &+ 16 <= memSize else { return -1 }
        let idx = Int((phys ^ (phys >> 13)) & UInt32(Interpreter.cacheSize - 1))
        let e = cache + idx
        guard e.pointee.tag == phys && e.pointee.kind == 2 else { return -1 }
        let lo = mem.loadUnaligned(fromByteOffset: Int(phys), as: UInt64.self)
        guard (lo & e.pointee.maskLo) == e.pointee.lo else { return -1 }
        if e.pointee.maskHi != 0
            && (mem.loadUnaligned(fromByteOffset: Int(phys) + 8, as: UInt64.self) & e.pointee.maskHi) != e.pointee.hi {
            return -1
        }
        return idx
    }

    /// The address of a fast memory operand of 4 bytes, or nil when the general path must run
    /// (segment not flat for this access, outside RAM, or alignment checking enabled).
    @inline(__always)
    func fastAddress(_ d: DI, write: Bool) -> Int? {
        if alignCheck { return nil }
        let bit: UInt8 = 1 << d.segment
        if (write ? flatWrite : flatRead) & bit == 0 { return nil }
        let ea = effectiveAddress(d)
        if UInt64(ea) &+ 4 > memSize { return nil }
        return Int(ea)
    }

    @inline(__always)
    func fastLoad(_ a: Int) -> UInt32 {
        UInt32(littleEndian: mem.loadUnaligned(fromByteOffset: a, as: UInt32.self))
    }

    @inline(__always)
    func fastStore(_ a: Int, _ v: UInt32) {
        mem.storeBytes(of: v.littleEndian, toByteOffset: a, as: UInt32.self)
    }

    /// Executes the cached instruction `d` of fast kind `kind` if it can complete here. Returns
    /// false, having changed nothing, when the general path must run it.
    @inline(__always)
    func fastExecute(_ d: DI, _ kind: UInt8, _ eip: inout UInt32) -> Bool {
        let next = eip &+ UInt32(d.length)
        switch kind {
        case FastKind.aluRMReg:
            let aop = UInt8(truncatingIfNeeded: d.opcode) >> 3
            let rm = Int(d.rm & 7)
            let res = alu32(aop, r[rm], r[Int(d.reg & 7)])
            if aop != 7 { r[rm] = res }
        case FastKind.aluRegRM:
            let aop = UInt8(truncatingIfNeeded: d.opcode) >> 3
            let reg = Int(d.reg & 7)
            let res = alu32(aop, r[reg], r[Int(d.rm & 7)])
            if aop != 7 { r[reg] = res }
        case FastKind.aluRegImm32, FastKind.aluRegImm8:
            let aop = d.reg
            let imm = kind == FastKind.aluRegImm32 ? d.immediate : signExtend(d.immediate, 1)
            let rm = Int(d.rm & 7)
            let res = alu32(aop, r[rm], imm)
            if aop != 7 { r[rm] = res }
        case FastKind.inc, FastKind.dec:
            let i = Int(d.opcode & 7)
            r[i] = incdec(r[i], 4, dec: kind == FastKind.dec)
        case FastKind.jccRel8:
            eip = fastCondition(UInt8(truncatingIfNeeded: d.opcode) & 0xF) ? next &+ signExtend(d.immediate, 1) : next
            return true
        case FastKind.jccRel32:
            eip = fastCondition(UInt8(truncatingIfNeeded: d.opcode) & 0xF) ? next &+ d.immediate : next
            return true
        case FastKind.movRMReg:
            r[Int(d.rm & 7)] = r[Int(d.reg & 7)]
        case FastKind.movRegRM:
            r[Int(d.reg & 7)] = r[Int(d.rm & 7)]
        case FastKind.movImm:
            r[Int(d.opcode & 7)] = d.immediate
        case FastKind.loadReg:
            guard let a = fastAddress(d, write: false) else { return false }
            r[Int(d.reg & 7)] = fastLoad(a)
        case FastKind.storeReg:
            guard let a = fastAddress(d, write: true) else { return false }
            fastStore(a, r[Int(d.reg & 7)])
        case FastKind.aluRegMem:
            guard let a = fastAddress(d, write: false) else { return false }
            let aop = UInt8(truncatingIfNeeded: d.opcode) >> 3
            let reg = Int(d.reg & 7)
            let res = alu32(aop, r[reg], fastLoad(a))
            if aop != 7 { r[reg] = res }
        case FastKind.aluMemReg:
            let aop = UInt8(truncatingIfNeeded: d.opcode) >> 3
            // CMP only reads; the others must be able to write (checked before anything changes).
            guard let a = fastAddress(d, write: aop != 7) else { return false }
            let res = alu32(aop, fastLoad(a), r[Int(d.reg & 7)])
            if aop != 7 { fastStore(a, res) }
        case FastKind.aluMemImm32, FastKind.aluMemImm8:
            let aop = d.reg
            guard let a = fastAddress(d, write: aop != 7) else { return false }
            let imm = kind == FastKind.aluMemImm32 ? d.immediate : signExtend(d.immediate, 1)
            let res = alu32(aop, fastLoad(a), imm)
            if aop != 7 { fastStore(a, res) }
        case FastKind.pushReg, FastKind.pushImm8, FastKind.pushImm32:
            guard let a = fastStack(4) else { return false }
            let v = kind == FastKind.pushReg ? r[Int(d.opcode & 7)]
                : (kind == FastKind.pushImm8 ? signExtend(d.immediate, 1) : d.immediate)
            fastStore(a, v)
            r[4] = UInt32(truncatingIfNeeded: a)
        case FastKind.pushAll:
            // EAX, ECX, EDX, EBX, original ESP, EBP, ESI, EDI: EAX at the highest address.
            guard let a = fastStack(32) else { return false }
            for i in 0..<8 { fastStore(a + 28 - 4 * i, r[i]) }
            r[4] = UInt32(truncatingIfNeeded: a)
        default:
            return false
        }
        eip = next
        return true
    }

    /// The new ESP of a push of `bytes` bytes on a flat, writable, 32-bit stack whose whole
    /// range lies in RAM without wrapping, or nil (the general path then handles segment
    /// checks, wrap-around, #AC and MMIO). Nothing is written here.
    @inline(__always)
    func fastStack(_ bytes: UInt32) -> Int? {
        if alignCheck || flatWrite & (1 << SegmentIndex.ss) == 0 || !seg[2].defaultBig { return nil }
        let sp = r[4]
        if sp < bytes || UInt64(sp) > memSize { return nil }
        return Int(sp &- bytes)
    }

    /// Runs fast-path instructions from EIP until one needs the general path or `n` reaches
    /// `budget`. Returns the cache index of an instruction that was found (validated) but must go
    /// through the general path, or -1. None of the fast instructions can change TF, CS,
    /// CR0 or the segment caches, so `fastPathAllowed` holds for the whole loop once it held at
    /// entry. EIP and the instruction count live in locals meanwhile and are written back.
    func fastRun(_ n: inout Int, _ budget: Int) -> Int {
        guard fastPathAllowed else { return -1 }
        var pc = eip
        var count = n
        var found = -1
        while count < budget {
            let idx = fastLookup(pc)
            if idx < 0 { break }
            let kind = cache[idx].fast
            if kind == FastKind.none || !fastExecute(UnsafePointer(cacheIns + idx), kind, &pc) {
                found = idx
                break
            }
            count &+= 1
        }
        instructionsExecuted &+= UInt64(count &- n)
        n = count
        eip = pc
        return found
    }

    /// `alu(op, a, b, 4)` written out for the fast path (same results and lazy flags).
    @inline(__always)
    func alu32(_ op: UInt8, _ a: UInt32, _ b: UInt32) -> UInt32 {
        let res: UInt32
        switch op & 7 {
        case 0: res = a &+ b; lop = LazyOp.add
        case 1: res = a | b; lop = LazyOp.logic
        case 2:
            let c: UInt32 = cf ? 1 : 0
            res = a &+ b &+ c; lcin = c; lop = LazyOp.adc
        case 3:
            let c: UInt32 = cf ? 1 : 0
            res = a &- b &- c; lcin = c; lop = LazyOp.sbb
        case 4: res = a & b; lop = LazyOp.logic
        case 6: res = a ^ b; lop = LazyOp.logic
        default: res = a &- b; lop = LazyOp.sub  // SUB and CMP
        }
        la = a; lb = b; lres = res; lsize = 4
        return res
    }

    /// `condition(cc)` with the common ZF tests (JZ/JNZ) answered directly.
    @inline(__always)
    func fastCondition(_ cc: UInt8) -> Bool {
        if cc >> 1 == 2 {
            let z = lop == LazyOp.none ? flags & EFlags.zf != 0 : lres == 0
            return cc & 1 == 0 ? z : !z
        }
        return condition(cc)
    }
}
