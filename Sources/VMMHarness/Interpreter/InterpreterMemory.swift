/// Linear and segmented memory access: paging (SDM vol. 3A, 4.3 "32-bit paging"), segment limit
/// and type checks (3.4.5, 5.3), alignment check (#AC), and the stop for non-RAM accesses.
extension Interpreter {
    // MARK: - Physical

    @inline(__always)
    func physCheck(_ p: UInt32, _ size: UInt8, write: Bool, data: UInt64) throws(Fault) {
        if UInt64(p) &+ UInt64(size) > memSize {
            throw .stop(.mmio(address: UInt64(p), isWrite: write, length: Int(size), data: write ? data : 0))
        }
    }

    @inline(__always)
    func physLoad(_ p: UInt32, _ size: UInt8) -> UInt32 {
        switch size {
        case 4: return UInt32(littleEndian: mem.loadUnaligned(fromByteOffset: Int(p), as: UInt32.self))
        case 2: return UInt32(UInt16(littleEndian: mem.loadUnaligned(fromByteOffset: Int(p), as: UInt16.self)))
        default: return UInt32(mem.load(fromByteOffset: Int(p), as: UInt8.self))
        }
    }

    @inline(__always)
    func physStore(_ p: UInt32, _ size: UInt8, _ v: UInt32) {
        switch size {
        case 4: mem.storeBytes(of: v.littleEndian, toByteOffset: Int(p), as: UInt32.self)
        case 2: mem.storeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian, toByteOffset: Int(p), as: UInt16.self)
        default: mem.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: Int(p), as: UInt8.self)
        }
    }

    /// A page-table entry read; outside guest memory reads as 0 (not present).
    @inline(__always)
    func ptRead(_ p: UInt32) -> UInt32 {
        UInt64(p) + 4 <= memSize ? physLoad(p, 4) : 0
    }

    // MARK: - Paging

    @inline(__always)
    func translate(_ lin: UInt32, write: Bool, user: Bool) throws(Fault) -> UInt32 {
        let vpn = lin >> 12
        let e = tlb + Int(vpn & UInt32(Interpreter.tlbSize - 1))
        if e.pointee.vpn == vpn {
            let need: UInt8 = write ? (user ? 4 | 8 : 1 | 8) : (user ? 2 : 0)
            if e.pointee.perm & need == need {
                return e.pointee.frame | (lin & 0xFFF)
            }
        }
        return try walk(lin, write: write, user: user)
    }

    func pageFault(_ lin: UInt32, present: Bool, write: Bool, user: Bool) -> Fault {
        sys.cr2 = lin
        let code: UInt32 = (present ? 1 : 0) | (write ? 2 : 0) | (user ? 4 : 0)
        return .exception(X86Exception(vector: 14, errorCode: code))
    }

    func walk(_ lin: UInt32, write: Bool, user: Bool) throws(Fault) -> UInt32 {
        let wp = sys.cr0 & CR0.wp != 0
        let pdeAddr = (sys.cr3 & 0xFFFF_F000) | ((lin >> 22) << 2)
        let pde = ptRead(pdeAddr)
        if pde & 1 == 0 { throw pageFault(lin, present: false, write: write, user: user) }
        var u: Bool
        var w: Bool
        var frame: UInt32
        var dirty: Bool
        if pde & 0x80 != 0 && sys.cr4 & 0x10 != 0 {
            u = pde & 4 != 0
            w = pde & 2 != 0
            try checkPerm(lin, u: u, w: w, wp: wp, write: write, user: user)
            var n = pde | 0x20
            if write { n |= 0x40 }
            if n != pde { physStore(pdeAddr, 4, n) }
            dirty = n & 0x40 != 0
            frame = (pde & 0xFFC0_0000) | (lin & 0x003F_F000)
        } else {
            let pteAddr = (pde & 0xFFFF_F000) | (((lin >> 12) & 0x3FF) << 2)
            let pte = ptRead(pteAddr)
            if pte & 1 == 0 { throw pageFault(lin, present: false, write: write, user: user) }
            u = pde & pte & 4 != 0
            w = pde & pte & 2 != 0
            try checkPerm(lin, u: u, w: w, wp: wp, write: write, user: user)
            if pde & 0x20 == 0 { physStore(pdeAddr, 4, pde | 0x20) }
            var n = pte | 0x20
            if write { n |= 0x40 }
            if n != pte && UInt64(pteAddr) + 4 <= memSize { physStore(pteAddr, 4, n) }
            dirty = n & 0x40 != 0
            frame = pte & 0xFFFF_F000
        }
        let e = tlb + Int((lin >> 12) & UInt32(Interpreter.tlbSize - 1))
        var perm: UInt8 = 0
        if w || !wp { perm |= 1 }
        if u { perm |= 2 }
        if u && w { perm |= 4 }
        if dirty { perm |= 8 }
        e.pointee = TLBEntry(vpn: lin >> 12, frame: frame, perm: perm)
        tlbFilled = true
        return frame | (lin & 0xFFF)
    }

    @inline(__always)
    func checkPerm(_ lin: UInt32, u: Bool, w: Bool, wp: Bool, write: Bool, user: Bool) throws(Fault) {
        if user {
            if !u || (write && !w) { throw pageFault(lin, present: true, write: write, user: user) }
        } else if write && !w && wp {
            throw pageFault(lin, present: true, write: write, user: user)
        }
    }

    // MARK: - Linear

    @inline(__always)
    func readLin(_ lin: UInt32, _ size: UInt8, user: Bool) throws(Fault) -> UInt32 {
        if !paging {
            try physCheck(lin, size, write: false, data: 0)
            return physLoad(lin, size)
        }
        if (lin & 0xFFF) &+ UInt32(size) <= 0x1000 {
            let p = try translate(lin, write: false, user: user)
            try physCheck(p, size, write: false, data: 0)
            return physLoad(p, size)
        }
        // Crosses a page: translate both pages first, then read bytewise.
        let p0 = try translate(lin, write: false, user: user)
        let p1 = try translate((lin | 0xFFF) &+ 1, write: false, user: user)
        var v: UInt32 = 0
        for i in 0..<UInt32(size) {
            let l = lin &+ i
            let p = (l & 0xFFF) < (lin & 0xFFF) ? (p1 & 0xFFFF_F000) | (l & 0xFFF) : (p0 & 0xFFFF_F000) | (l & 0xFFF)
            try physCheck(p, 1, write: false, data: 0)
            v |= physLoad(p, 1) << (i * 8)
        }
        return v
    }

    @inline(__always)
    func writeLin(_ lin: UInt32, _ size: UInt8, _ v: UInt32, user: Bool) throws(Fault) {
        if !paging {
            try physCheck(lin, size, write: true, data: UInt64(v))
            physStore(lin, size, v)
            return
        }
        if (lin & 0xFFF) &+ UInt32(size) <= 0x1000 {
            let p = try translate(lin, write: true, user: user)
            try physCheck(p, size, write: true, data: UInt64(v))
            physStore(p, size, v)
            return
        }
        let p0 = try translate(lin, write: true, user: user)
        let p1 = try translate((lin | 0xFFF) &+ 1, write: true, user: user)
        for i in 0..<UInt32(size) {
            let l = lin &+ i
            let p = (l & 0xFFF) < (lin & 0xFFF) ? (p1 & 0xFFFF_F000) | (l & 0xFFF) : (p0 & 0xFFFF_F000) | (l & 0xFFF)
            try physCheck(p, 1, write: true, data: UInt64(v))
        }
        for i in 0..<UInt32(size) {
            let l = lin &+ i
            let p = (l & 0xFFF) < (lin & 0xFFF) ? (p1 & 0xFFFF_F000) | (l & 0xFFF) : (p0 & 0xFFFF_F000) | (l & 0xFFF)
            physStore(p, 1, v >> (i * 8))
        }
    }

    @inline(__always)
    func readLin8(_ lin: UInt32, user: Bool) throws(Fault) -> UInt8 {
        UInt8(truncatingIfNeeded: try readLin(lin, 1, user: user))
    }

    /// Implicit supervisor-mode accesses (descriptor tables, TSS).
    func readSys(_ lin: UInt32, _ size: UInt8) throws(Fault) -> UInt32 {
        try readLin(lin, size, user: false)
    }

    func writeSys(_ lin: UInt32, _ size: UInt8, _ v: UInt32) throws(Fault) {
        try writeLin(lin, size, v, user: false)
    }

    // MARK: - Segmented

    /// Checks an access of `size` bytes at `off` in segment register `s` and returns the linear
    /// address. Faults: #GP(0), or #SS(0) for SS.
    @inline(__always)
    func linear(_ s: UInt8, _ off: UInt32, _ size: UInt8, write: Bool) throws(Fault) -> UInt32 {
        let bit: UInt8 = 1 << s
        let lin: UInt32
        if (write ? flatWrite : flatRead) & bit != 0 {
            lin = off
        } else {
            lin = try checkedLinear(seg[Int(s)], s, off, size, write: write)
        }
        if alignCheck && size > 1 && (lin & UInt32(size - 1)) != 0 && cpl == 3 && flags & EFlags.ac != 0 {
            throw .exception(X86Exception(vector: 17, errorCode: 0))
        }
        return lin
    }

    func checkedLinear(_ sr: SegmentRegister, _ s: UInt8, _ off: UInt32, _ size: UInt8, write: Bool) throws(Fault) -> UInt32 {
        let fault: Fault = s == SegmentIndex.ss ? .ss(0) : .gp(0)
        if sr.unusable || !sr.present || !sr.isCodeOrData { throw fault }
        if write && (sr.isCode || sr.type & 2 == 0) { throw fault }
        if !write && sr.isCode && sr.type & 2 == 0 { throw fault }
        let last = UInt64(off) + UInt64(size) - 1
        if !sr.isCode && sr.type & 4 != 0 {
            let upper: UInt64 = sr.defaultBig ? 0xFFFF_FFFF : 0xFFFF
            if UInt64(off) <= UInt64(sr.limit) || last > upper { throw fault }
        } else if last > UInt64(sr.limit) {
            throw fault
        }
        return sr.base &+ off
    }

    /// Checks an access through a segment cache that is not loaded yet (the new stack of an
    /// inter-privilege transfer). Returns the linear address.
    func linearIn(_ sr: SegmentRegister, _ off: UInt32, _ size: UInt8, fault: Fault) throws(Fault) -> UInt32 {
        let last = UInt64(off) + UInt64(size) - 1
        if !sr.isCode && sr.type & 4 != 0 {
            let upper: UInt64 = sr.defaultBig ? 0xFFFF_FFFF : 0xFFFF
            if UInt64(off) <= UInt64(sr.limit) || last > upper { throw fault }
        } else if last > UInt64(sr.limit) {
            throw fault
        }
        return sr.base &+ off
    }

    @inline(__always)
    func read(_ s: UInt8, _ off: UInt32, _ size: UInt8) throws(Fault) -> UInt32 {
        let lin = try linear(s, off, size, write: false)
        return try readLin(lin, size, user: cpl == 3)
    }

    @inline(__always)
    func write(_ s: UInt8, _ off: UInt32, _ size: UInt8, _ v: UInt32) throws(Fault) {
        let lin = try linear(s, off, size, write: true)
        try writeLin(lin, size, v, user: cpl == 3)
    }

    /// Checks that a write would succeed (segment, paging, RAM) without writing: used by
    /// read-modify-write instructions so that the read faults like the write would.
    @inline(__always)
    func probeWrite(_ s: UInt8, _ off: UInt32, _ size: UInt8) throws(Fault) -> UInt32 {
        try linear(s, off, size, write: true)
    }

    // MARK: - Effective address

    @inline(__always)
    func effectiveAddress(_ d: DI) -> UInt32 {
        var a = d.displacement
        if d.base != DecodedInstruction.noRegister { a = a &+ r[Int(d.base & 7)] }
        if d.index != DecodedInstruction.noRegister { a = a &+ (r[Int(d.index & 7)] << UInt32(d.scale & 3)) }
        return d.address32 ? a : a & 0xFFFF
    }

    /// Reads the r/m operand of `size` bytes.
    @inline(__always)
    func readRM(_ d: DI, _ size: UInt8) throws(Fault) -> UInt32 {
        if !d.isMemory { return getReg(size, d.rm) }
        return try read(d.segment, effectiveAddress(d), size)
    }

    /// Writes the r/m operand of `size` bytes.
    @inline(__always)
    func writeRM(_ d: DI, _ size: UInt8, _ v: UInt32) throws(Fault) {
        if !d.isMemory { setReg(size, d.rm, v); return }
        try write(d.segment, effectiveAddress(d), size, v)
    }

    // MARK: - Stack

    @inline(__always)
    var stackBig: Bool { seg[2].defaultBig }

    /// Pushes with a local stack pointer (committed by the caller).
    @inline(__always)
    func pushLocal(_ sp: inout UInt32, _ v: UInt32, _ size: UInt8) throws(Fault) {
        if stackBig {
            let n = sp &- UInt32(size)
            try write(SegmentIndex.ss, n, size, v)
            sp = n
        } else {
            let n = (sp &- UInt32(size)) & 0xFFFF
            try write(SegmentIndex.ss, n, size, v)
            sp = (sp & 0xFFFF_0000) | n
        }
    }

    @inline(__always)
    func popLocal(_ sp: inout UInt32, _ size: UInt8) throws(Fault) -> UInt32 {
        if stackBig {
            let v = try read(SegmentIndex.ss, sp, size)
            sp = sp &+ UInt32(size)
            return v
        } else {
            let v = try read(SegmentIndex.ss, sp & 0xFFFF, size)
            sp = (sp & 0xFFFF_0000) | ((sp &+ UInt32(size)) & 0xFFFF)
            return v
        }
    }

    @inline(__always)
    func push(_ v: UInt32, _ size: UInt8) throws(Fault) {
        var sp = r[4]
        try pushLocal(&sp, v, size)
        r[4] = sp
    }

    @inline(__always)
    func pop(_ size: UInt8) throws(Fault) -> UInt32 {
        var sp = r[4]
        let v = try popLocal(&sp, size)
        r[4] = sp
        return v
    }
}
