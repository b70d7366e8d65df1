/// String I/O: INS/INSB/INSW/INSD (6C/6D) and OUTS/OUTSB/OUTSW/OUTSD (6E/6F), with and without
/// REP (SDM vol. 2B, INS/INSB/INSW/INSD and OUTS/OUTSB/OUTSW/OUTSD; vol. 1, 19.5 "I/O permission
/// bit map").
///
/// Every element is one stop for the host, in the order the CPU performs them, so the machine
/// sees string I/O exactly as it sees IN and OUT (`GuestExit`'s element-by-element rule):
/// - OUTS reads the element from seg:(E)SI (DS unless overridden), advances (E)SI, decrements
///   (E)CX under REP, and stops with `.portOut(port: DX, size, value)`: the element is complete.
/// - INS checks that ES:(E)DI is writable (segment, paging, RAM; no override), then stops with
///   `.portIn(port: DX, size)` with nothing changed. `completePortIn(value:)` stores the value at
///   the checked destination, advances (E)DI and decrements (E)CX under REP. A fault on the
///   destination is raised before the port is read, so the host sees no port access for it.
/// - Under REP (F3, and F2, which these instructions treat the same) EIP stays at the
///   instruction until (E)CX reaches 0, so the next run restarts it for the next element, and an
///   interrupt delivered between elements returns to it (restartable, as REP MOVS is). A REP
///   with (E)CX = 0 does nothing and makes no stop.
/// - The address size (67h) picks SI/DI/CX or ESI/EDI/ECX; the operand size (66h) the element
///   size of 6D/6F; EFLAGS.DF the direction.
/// - The I/O permission check (`checkIOPermission`: CPL <= IOPL, else the TSS bitmap; always the
///   bitmap in V86 mode) comes first, also for a REP with (E)CX = 0. A fault leaves what earlier
///   elements committed.
extension Interpreter {
    /// An IN or INS element waiting for `completePortIn`: everything needed to finish it.
    struct PendingIn {
        /// Element size in bytes (1, 2, 4).
        var size: UInt8
        /// EIP after the instruction.
        var next: UInt32
        /// INS only (false: IN, the value goes to AL/AX/EAX).
        var string = false
        /// INS: where a REP INS with elements left restarts (the instruction's own EIP).
        var restart: UInt32 = 0
        /// INS: 32-bit address size (EDI/ECX) or 16-bit (DI/CX).
        var address32 = true
        /// INS: with a REP prefix.
        var rep = false
        /// INS: what EDI advances by (the element size, negated when EFLAGS.DF = 1).
        var delta: UInt32 = 0
        /// INS: the checked destination: its linear address and the physical addresses of its
        /// first byte and of the first byte on the next page (the same page when it does not
        /// cross one).
        var linear: UInt32 = 0
        var physical: UInt32 = 0
        var physicalNextPage: UInt32 = 0
    }

    /// INS/INSB/INSW/INSD: see the type's notes. Stops with `.portIn` (EIP at the instruction).
    func inString(_ d: DI) throws(Fault) {
        let s = d.size
        let port = UInt16(truncatingIfNeeded: r[2])
        try checkIOPermission(port: port, size: s)
        let a32 = d.address32
        let rep = d.rep != 0
        if rep && (a32 ? r[1] : r[1] & 0xFFFF) == 0 { return }
        let di = a32 ? r[7] : r[7] & 0xFFFF
        let lin = try linear(SegmentIndex.es, di, s, write: true)
        let user = cpl == 3
        let p0: UInt32
        let p1: UInt32
        if !paging {
            try physCheck(lin, s, write: true, data: 0)
            p0 = lin
            p1 = lin
        } else if (lin & 0xFFF) &+ UInt32(s) <= 0x1000 {
            p0 = try translate(lin, write: true, user: user)
            try physCheck(p0, s, write: true, data: 0)
            p1 = p0
        } else {
            // Crosses a page: both pages are checked before the port is read.
            p0 = try translate(lin, write: true, user: user)
            p1 = try translate((lin | 0xFFF) &+ 1, write: true, user: user)
            for i in 0..<UInt32(s) {
                try physCheck(Interpreter.splitPhysical(lin, i, p0, p1), 1, write: true, data: 0)
            }
        }
        pendingIn = PendingIn(size: s, next: eip, string: true, restart: startEIP, address32: a32, rep: rep,
                              delta: flags & EFlags.df != 0 ? 0 &- UInt32(s) : UInt32(s),
                              linear: lin, physical: p0, physicalNextPage: p1)
        throw .stop(.portIn(port: port, size: Int(s)))
    }

    /// Finishes an INS element with the value the host supplied (the destination was checked when
    /// the element started, so this cannot fault).
    func completeInString(_ p: PendingIn, _ value: UInt32) {
        if p.physical == p.physicalNextPage {
            physStore(p.physical, p.size, value)
        } else {
            for i in 0..<UInt32(p.size) {
                physStore(Interpreter.splitPhysical(p.linear, i, p.physical, p.physicalNextPage), 1, value >> (i * 8))
            }
        }
        advance(7, p.address32, p.delta)
        eip = p.next
        if p.rep {
            let cx = p.address32 ? r[1] &- 1 : ((r[1] & 0xFFFF) &- 1) & 0xFFFF
            if p.address32 { r[1] = cx } else { setReg(2, 1, cx) }
            if cx != 0 { eip = p.restart }
        }
    }

    /// The physical address of byte `i` of an access at `lin` that crosses a page, whose two
    /// pages translate to `p0` (the first byte's physical address) and `p1` (the next page's).
    @inline(__always)
    static func splitPhysical(_ lin: UInt32, _ i: UInt32, _ p0: UInt32, _ p1: UInt32) -> UInt32 {
        let l = lin &+ i
        return (l & 0xFFF) < (lin & 0xFFF) ? (p1 & 0xFFFF_F000) | (l & 0xFFF) : (p0 & 0xFFFF_F000) | (l & 0xFFF)
    }

    /// OUTS/OUTSB/OUTSW/OUTSD: see the type's notes. The element is complete when it stops with
    /// `.portOut` (EIP past the instruction, or still at it under REP with elements left).
    func outString(_ d: DI) throws(Fault) {
        let s = d.size
        let port = UInt16(truncatingIfNeeded: r[2])
        try checkIOPermission(port: port, size: s)
        let a32 = d.address32
        let rep = d.rep != 0
        let cx = a32 ? r[1] : r[1] & 0xFFFF
        if rep && cx == 0 { return }
        let si = a32 ? r[6] : r[6] & 0xFFFF
        let value = try read(d.segment, si, s)
        advance(6, a32, flags & EFlags.df != 0 ? 0 &- UInt32(s) : UInt32(s))
        if rep {
            let left = cx &- 1
            if a32 { r[1] = left } else { setReg(2, 1, left) }
            if left != 0 { eip = startEIP }
        }
        pendingStop = .portOut(port: port, size: Int(s), value: value)
    }
}
