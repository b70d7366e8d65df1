/// Why `Interpreter.run`/`step` stopped. Mirrors the exits KVM gives for the same guest.
public enum InterpreterStop: Equatable, Sendable {
    /// OUT completed (EIP is past it).
    case portOut(port: UInt16, size: Int, value: UInt32)
    /// IN is waiting for `completePortIn` (EIP still at it).
    case portIn(port: UInt16, size: Int)
    /// HLT (EIP past it).
    case halt
    /// Triple fault or another condition that stops the CPU.
    case shutdown(reason: String)
    /// A physical access outside guest memory; the instruction had no effect (EIP at it).
    case mmio(address: UInt64, isWrite: Bool, length: Int, data: UInt64)
    /// `run(budget:)` executed its budget.
    case budgetExhausted
}

/// An x86 exception as a value: the vector and the error code the CPU pushes, if any.
public struct X86Exception: Error, Equatable, Sendable, CustomStringConvertible {
    public var vector: UInt8
    public var errorCode: UInt32?
    public init(vector: UInt8, errorCode: UInt32? = nil) {
        self.vector = vector
        self.errorCode = errorCode
    }

    public var description: String {
        let n = X86Exception.mnemonic(vector)
        if let e = errorCode { return "\(n)(\(String(e, radix: 16, uppercase: true))h)" }
        return n
    }

    /// "#GP", "#PF", ... or "INT xxh".
    public static func mnemonic(_ v: UInt8) -> String {
        switch v {
        case 0: return "#DE"
        case 1: return "#DB"
        case 2: return "NMI"
        case 3: return "#BP"
        case 4: return "#OF"
        case 5: return "#BR"
        case 6: return "#UD"
        case 7: return "#NM"
        case 8: return "#DF"
        case 10: return "#TS"
        case 11: return "#NP"
        case 12: return "#SS"
        case 13: return "#GP"
        case 14: return "#PF"
        case 16: return "#MF"
        case 17: return "#AC"
        case 18: return "#MC"
        case 19: return "#XM"
        default: return "INT \(String(v, radix: 16, uppercase: true))h"
        }
    }
}

/// Everything an instruction can end with other than completing: an exception to deliver or a
/// stop for the host. Thrown (typed) through the executor and caught in one place, `stepOne`.

enum Fault: Error {
    case exception(X86Exception)
    case stop(InterpreterStop)

    @inline(__always) static func gp(_ code: UInt32 = 0) -> Fault { .exception(X86Exception(vector: 13, errorCode: code)) }
    @inline(__always) static func ss(_ code: UInt32 = 0) -> Fault { .exception(X86Exception(vector: 12, errorCode: code)) }
    @inline(__always) static func np(_ code: UInt32) -> Fault { .exception(X86Exception(vector: 11, errorCode: code)) }
    @inline(__always) static func ts(_ code: UInt32) -> Fault { .exception(X86Exception(vector: 10, errorCode: code)) }
    static let ud = Fault.exception(X86Exception(vector: 6))
    static let nm = Fault.exception(X86Exception(vector: 7))
    static let de = Fault.exception(X86Exception(vector: 0))
}

/// One entry of the decoded-instruction cache: keyed by the physical address of the first byte,
/// validated on every hit by comparing the instruction's bytes with memory (so self-modifying
/// code and host writes into guest code are always seen).
struct DecodeCacheEntry {
    var tag: UInt32 = 0
    /// 0 = empty, 1 = decoded for a 16-bit code segment, 2 = for a 32-bit one.
    var kind: UInt32 = 0
    var lo: UInt64 = 0
    var hi: UInt64 = 0
    var maskLo: UInt64 = 0
    var maskHi: UInt64 = 0
    /// `FastKind` of the instruction (the run loop's fast path), `FastKind.none` if it has none.
    var fast: UInt8 = 0
}

/// One TLB entry (direct mapped by linear page number).
struct TLBEntry {
    /// Linear page number, or `UInt32.max` when empty.
    var vpn: UInt32 = .max
    /// Physical page base.
    var frame: UInt32 = 0
    /// Permission bits: 1 supervisor write, 2 user read, 4 user write, 8 dirty already set.
    var perm: UInt8 = 0
}

/// The pure-Swift 32-bit protected-mode x86 interpreter (rings 0 and 3, virtual-8086 mode, 32-bit
/// paging).
///
/// Architecture notes (documented choices):
/// - Decoding is done by `X86Decoder` (pure); decoded instructions are cached per physical address
///   and validated against memory on every use.
/// - Arithmetic flags are lazy: the last ALU result and operands are kept and the flags computed
///   on demand.
/// - CPUID reports vendor "VMMHarnessCPU" with family 5 (a plain 32-bit CPU: FPU absent, TSC,
///   CX8, PSE). RDTSC returns a deterministic counter: the retired instruction count.
/// - IN/OUT/INS/OUTS (SDM vol. 1, 19.5): in protected mode CPL <= IOPL allows every port and
///   CPL > IOPL consults the TSS I/O permission bitmap; in V86 mode only the bitmap counts, as on
///   hardware. Every port access is one stop for the host: string I/O
///   (`InterpreterStringIO.swift`) stops once per element, with REP restarting the instruction
///   until (E)CX = 0.
/// - x87: with CR0.EM or CR0.TS set every D8–DF opcode raises #NM; otherwise FNINIT, FNSTSW,
///   FNSTCW and FWAIT work on a minimal state and the rest raise #UD. MMX/SSE opcodes raise #NM
///   with CR0.TS, otherwise #UD. Task gates, task switches and 16-bit gates are not supported
///   (#GP with the gate's error code).
/// - Virtual-8086 mode (SDM vol. 3A, chapter 20; `InterpreterV86.swift`): entered by IRETD at
///   CPL 0 with VM set in the popped EFLAGS, or by setting `state` with EFLAGS.VM = 1 (the segment
///   caches are then rebuilt from the selectors: base = selector << 4, limit FFFFh, DPL 3 data).
///   CPL 3, 16-bit defaults (66h/67h select 32-bit), real-mode style segment loads, offsets beyond
///   FFFFh fault (#GP(0), #SS(0) for SS). CLI/STI/PUSHF/POPF/INT n/IRET raise #GP(0) when
///   IOPL < 3; IN/OUT/INS/OUTS use the TSS I/O bitmap. Interrupts and exceptions leave V86 mode
///   through 32-bit gates to a non-conforming ring-0 segment (else #GP(selector)) with the GS,
///   FS, DS, ES frame of 6.12.1. Not supported: the virtual-mode extensions (CR4.VME/PVI are ignored: VIF,
///   VIP and the interrupt redirection bitmap have no effect), task gates from V86 mode, and
///   real-address mode (there is no A20 wrap: FFFF:0010 is linear 10_0000h, as in V86 mode).
/// - External interrupts are delivered when `deliverExternalInterrupt` is called; the caller
///   decides whether IF and the interrupt shadow allow it (`InterpreterBackend` checks both).
/// - Page-table entries outside guest memory read as zero (not present). PAE is not implemented:
///   setting CR4.PAE is #GP(0). Real mode is not supported: clearing CR0.PE is #GP(0).
/// - Faults undo the instruction's register effects (EIP back at it, ESP unchanged); a
///   read-modify-write checks the write before it reads. REP string instructions commit per
///   iteration (restartable) and yield every 1024 iterations with EIP still at them (INS/OUTS
///   stop at every element).
/// - The STI / MOV SS / POP SS interrupt shadow is reported by `interruptsInhibited` (a host
///   write of a different `state` ends it; see `state`).
/// - Not modelled: RF, debug-register breakpoints, call gates (far CALL/JMP through a gate is
///   #GP(selector)), hardware task switching, NMI blocking until IRET, and the EFLAGS.TF
///   single-step trap after IN/INS (they complete in `completePortIn`, which raises no #DB).
/// - Self-modifying code is always seen: every decode-cache hit compares the cached bytes with
///   memory, so writes by the guest or by the host are both picked up.
public final class Interpreter {
    public let memory: GuestMemory
    let mem: UnsafeMutableRawPointer
    let memSize: UInt64

    /// General registers EAX..EDI by encoding.
    let r: UnsafeMutablePointer<UInt32>
    /// Segment registers ES, CS, SS, DS, FS, GS by encoding.
    let seg: UnsafeMutablePointer<SegmentRegister>
    var eip: UInt32 = 0
    /// EFLAGS except that the arithmetic bits are stale while `lop != 0`.
    var flags: UInt32 = 2
    // Lazy flags: operation, result, operands, size, carry in.
    var lop: UInt8 = 0
    var lres: UInt32 = 0
    var la: UInt32 = 0
    var lb: UInt32 = 0
    var lsize: UInt8 = 4
    var lcin: UInt32 = 0

    /// The rest of the state (control, debug, table registers, TR, LDTR).
    var sys = CPUState()

    // Derived caches.
    var cpl: UInt8 = 0
    var paging = false
    var alignCheck = false
    /// Bit i set: segment i is flat (base 0, limit 4G, usable) and readable / writable.
    var flatRead: UInt8 = 0
    var flatWrite: UInt8 = 0
    var csFlat = false
    var csBase: UInt32 = 0
    var csLimit: UInt32 = 0
    var csKind: UInt32 = 2

    let cache: UnsafeMutablePointer<DecodeCacheEntry>
    /// The decoded instructions of the cache entries (same index), and a slot for uncacheable ones.
    let cacheIns: UnsafeMutablePointer<DecodedInstruction>
    let scratch: UnsafeMutablePointer<DecodedInstruction>
    static let cacheSize = 8192
    let tlb: UnsafeMutablePointer<TLBEntry>
    static let tlbSize = 256
    /// Whether any TLB entry may be valid (set by every page walk, cleared by `flushTLB`).
    var tlbFilled = false

    // Per-instruction bookkeeping.
    var startEIP: UInt32 = 0
    var pendingStop: InterpreterStop? = nil
    var suppressSingleStep = false
    /// The IN or INS element waiting for `completePortIn` (cleared by setting `state`).
    var pendingIn: PendingIn? = nil
    // Minimal x87 state for FNINIT/FNSTSW/FNSTCW.
    var fpuStatus: UInt16 = 0
    var fpuControl: UInt16 = 0x37F

    /// Instructions retired (faulting instructions do not count; INT n does).
    @exclusivity(unchecked) public internal(set) var instructionsExecuted: UInt64 = 0
    /// `instructionsExecuted` value up to which external interrupts are inhibited (STI, MOV SS,
    /// POP SS shadow: the instruction after them completes first).
    @exclusivity(unchecked) var shadowEnd: UInt64 = 0

    /// Whether external interrupts are inhibited right now by the STI / MOV SS / POP SS shadow
    /// (SDM vol. 3A, 6.8.3): the instruction after them has not completed yet. A virtual PIC
    /// should not call `deliverExternalInterrupt` while true.
    ///
    /// The shadow ends when the next instruction completes, when an interrupt or exception is
    /// delivered, and when the host sets `state` to anything other than the state the
    /// interpreter holds. Setting this property is for restoring a captured vCPU (set it after
    /// `state`): true inhibits interrupts until the next instruction completes.
    public var interruptsInhibited: Bool {
        get { instructionsExecuted < shadowEnd }
        set { shadowEnd = newValue ? instructionsExecuted &+ 1 : instructionsExecuted }
    }

    /// Creates an interpreter over `memory` starting from `state`.
    public init(memory: GuestMemory, state: CPUState) {
        self.memory = memory
        self.mem = memory.base
        self.memSize = UInt64(memory.size)
        r = .allocate(capacity: 8)
        r.initialize(repeating: 0, count: 8)
        seg = .allocate(capacity: 6)
        seg.initialize(repeating: SegmentRegister(), count: 6)
        cache = .allocate(capacity: Interpreter.cacheSize)
        cache.initialize(repeating: DecodeCacheEntry(), count: Interpreter.cacheSize)
        cacheIns = .allocate(capacity: Interpreter.cacheSize)
        cacheIns.initialize(repeating: DecodedInstruction(), count: Interpreter.cacheSize)
        scratch = .allocate(capacity: 1)
        scratch.initialize(to: DecodedInstruction())
        tlb = .allocate(capacity: Interpreter.tlbSize)
        tlb.initialize(repeating: TLBEntry(), count: Interpreter.tlbSize)
        self.state = state
    }

    deinit {
        r.deallocate()
        seg.deallocate()
        cache.deallocate()
        cacheIns.deallocate()
        scratch.deallocate()
        tlb.deallocate()
    }

    /// The full architectural state. Setting it flushes the TLB, recomputes derived caches and
    /// drops a pending IN/INS (its instruction runs again from the new state).
    ///
    /// The interrupt shadow (`interruptsInhibited`) is not part of `CPUState`. Setting a state
    /// that differs from the current one ends it: the shadow belongs to the instruction the
    /// interpreter last completed, and a host write (a fault resumed from its frame, another
    /// context) starts from a new point. Writing back exactly the state read keeps it, since the
    /// instruction it covers is still the next one. A restore sets `interruptsInhibited` after.
    public var state: CPUState {
        get {
            var s = sys
            s.eax = r[0]; s.ecx = r[1]; s.edx = r[2]; s.ebx = r[3]
            s.esp = r[4]; s.ebp = r[5]; s.esi = r[6]; s.edi = r[7]
            s.eip = eip
            s.eflags = eflags
            s.es = seg[0]; s.cs = seg[1]; s.ss = seg[2]; s.ds = seg[3]; s.fs = seg[4]; s.gs = seg[5]
            return s
        }
        set {
            // Compared only while a shadow is active (rare): the usual write costs nothing more.
            if shadowEnd > instructionsExecuted && newValue != state { shadowEnd = instructionsExecuted }
            let wasV86 = v86
            sys = newValue
            r[0] = newValue.eax; r[1] = newValue.ecx; r[2] = newValue.edx; r[3] = newValue.ebx
            r[4] = newValue.esp; r[5] = newValue.ebp; r[6] = newValue.esi; r[7] = newValue.edi
            eip = newValue.eip
            flags = newValue.eflags | 2
            lop = 0
            // The derived segment caches depend only on the six segment caches and on V86 mode
            // (CPL): when neither changed (the usual fault round trip, where the host writes back
            // general registers, EIP and EFLAGS) they are already right.
            var segmentsSame = wasV86 == v86
            @inline(__always) func load(_ i: Int, _ v: SegmentRegister) {
                if seg[i] != v { seg[i] = v; segmentsSame = false }
            }
            load(0, newValue.es); load(1, newValue.cs); load(2, newValue.ss)
            load(3, newValue.ds); load(4, newValue.fs); load(5, newValue.gs)
            pendingIn = nil
            // A host-written V86 state (EFLAGS.VM = 1): the segment caches are rebuilt from the
            // selectors, real-mode style, as every V86 segment load does (SDM vol. 3A, 20.1.1).
            if v86 {
                normalizeV86Segments()
                segmentsSame = false
            }
            controlChanged()
            if !segmentsSame {
                for i in 0..<6 { segmentChanged(UInt8(i)) }
            }
        }
    }

    // MARK: - Derived caches

    /// Recomputes what depends on CR0/CR4 and flushes the TLB.
    func controlChanged() {
        paging = sys.cr0 & CR0.pg != 0 && sys.cr0 & CR0.pe != 0
        alignCheck = sys.cr0 & CR0.am != 0
        flushTLB()
    }

    func flushTLB() {
        // Entries are only ever filled by a page walk: with none since the last flush there is
        // nothing to clear (setting `state` flushes, and that is on every fault round trip).
        guard tlbFilled else { return }
        for i in 0..<Interpreter.tlbSize { tlb[i].vpn = .max }
        tlbFilled = false
    }

    /// Recomputes the flat masks after segment register `i` changed.
    func segmentChanged(_ i: UInt8) {
        let s = seg[Int(i & 7) % 6]
        let bit: UInt8 = 1 << (i % 6)
        flatRead &= ~bit
        flatWrite &= ~bit
        let usable = !s.unusable && s.present && s.isCodeOrData
        let flat = usable && s.base == 0 && s.limit == 0xFFFF_FFFF
        if flat {
            if s.isCode {
                if s.type & 2 != 0 { flatRead |= bit }
            } else if s.type & 4 == 0 {
                flatRead |= bit
                if s.type & 2 != 0 { flatWrite |= bit }
            }
        }
        if i == SegmentIndex.cs {
            // V86 mode always runs at CPL 3 whatever the selector (SDM vol. 3A, 20.1.1).
            cpl = v86 ? 3 : UInt8(s.selector & 3)
            csBase = s.base
            csLimit = s.limit
            csFlat = s.base == 0 && s.limit == 0xFFFF_FFFF
            csKind = s.defaultBig ? 2 : 1
        }
    }

    // MARK: - Registers

    @inline(__always) @usableFromInline
    func getReg(_ size: UInt8, _ i: UInt8) -> UInt32 {
        if size == 4 { return r[Int(i & 7)] }
        if size == 2 { return r[Int(i & 7)] & 0xFFFF }
        if i & 4 == 0 { return r[Int(i & 3)] & 0xFF }
        return (r[Int(i & 3)] >> 8) & 0xFF
    }

    @inline(__always) @usableFromInline
    func setReg(_ size: UInt8, _ i: UInt8, _ v: UInt32) {
        if size == 4 { r[Int(i & 7)] = v; return }
        if size == 2 { r[Int(i & 7)] = (r[Int(i & 7)] & 0xFFFF_0000) | (v & 0xFFFF); return }
        if i & 4 == 0 {
            r[Int(i & 3)] = (r[Int(i & 3)] & 0xFFFF_FF00) | (v & 0xFF)
        } else {
            r[Int(i & 3)] = (r[Int(i & 3)] & 0xFFFF_00FF) | ((v & 0xFF) << 8)
        }
    }

    // MARK: - Run loop

    /// Executes until a stop; at most `budget` instructions (each step counts, faults included).
    public func run(budget: Int) -> InterpreterStop {
        var n = 0
        while n < budget {
            // Fast path (InterpreterFastPath.swift): a validated decode-cache hit of a common
            // instruction completes here; anything else takes the general `stepOne`, reusing
            // the instruction already found.
            let idx = fastRun(&n, budget)
            if n >= budget { break }
            if let s = stepOne(prefetched: idx >= 0 ? UnsafePointer(cacheIns + idx) : nil) { return s }
            n &+= 1
        }
        return .budgetExhausted
    }

    /// Executes exactly one instruction, delivering any exception it raises.
    /// Returns nil when the instruction completed (or its exception was delivered).
    public func step() -> InterpreterStop? {
        stepOne()
    }

    /// One instruction through the general path. `prefetched` is the instruction at EIP when the
    /// caller already found it (a validated decode-cache hit for the current CS), else nil.
    @inline(__always)
    func stepOne(prefetched: DI? = nil) -> InterpreterStop? {
        startEIP = eip
        let singleStep = flags & EFlags.tf != 0
        do throws(Fault) {
            let ins: DI
            if let p = prefetched { ins = p } else { ins = try fetch() }
            try execute(ins)
        } catch {
            switch error {
            case .exception(let x):
                eip = startEIP
                return deliverException(x)
            case .stop(let s):
                eip = startEIP
                pendingStop = nil
                return s
            }
        }
        instructionsExecuted &+= 1
        if let s = pendingStop {
            pendingStop = nil
            if case .portIn = s { return s }
            if singleStep { if let s2 = singleStepTrap() { return s2 } }
            return s
        }
        if singleStep { return singleStepTrap() }
        return nil
    }

    func singleStepTrap() -> InterpreterStop? {
        if suppressSingleStep {
            suppressSingleStep = false
            return nil
        }
        sys.dr6 |= 0x4000
        return deliverException(X86Exception(vector: 1))
    }

    /// Supplies the value for the pending IN or INS element (after a `.portIn` stop): IN writes
    /// AL/AX/EAX; INS stores it at the ES:(E)DI checked when the element started, advances (E)DI
    /// and, under REP, decrements (E)CX (EIP stays at the instruction while elements are left).
    /// Completes the instruction (or the element). Does nothing when no IN is pending.
    public func completePortIn(value: UInt32) {
        guard let p = pendingIn else { return }
        pendingIn = nil
        if p.string {
            completeInString(p, value)
        } else {
            setReg(p.size, 0, value)
            eip = p.next
        }
        instructionsExecuted &+= 1
    }

    /// Whether an IN or INS element is waiting for `completePortIn`.
    public var portInPending: Bool { pendingIn != nil }

    /// Delivers a hardware interrupt (or NMI, vector 2) through the IDT as the CPU does between
    /// instructions: no error code, EXT set in error codes of faults raised while delivering it.
    /// The caller decides whether EFLAGS.IF and the interrupt shadow allow it (the backend's
    /// `deliverExternalInterrupt` checks both). A delivered interrupt ends the shadow and drops a
    /// pending IN/INS (the instruction runs again after the handler returns). Returns nil when
    /// the handler is entered, else the stop delivery ended with (a triple fault's shutdown, or
    /// an access outside guest memory).
    public func deliverExternalInterrupt(vector: UInt8) -> InterpreterStop? {
        pendingIn = nil
        shadowEnd = instructionsExecuted
        do throws(Fault) {
            try deliver(vector: vector, errorCode: nil, software: false, external: true, returnEIP: eip)
            return nil
        } catch {
            switch error {
            case .stop(let s): return s
            case .exception(let x): return deliverException(x)
            }
        }
    }

    // MARK: - Instruction fetch

    @inline(__always)
    func fetch() throws(Fault) -> DI {
        let lin = csFlat ? eip : csBase &+ eip
        let phys = paging ? try translate(lin, write: false, user: cpl == 3) : lin
        if UInt64(phys) &+ 16 <= memSize {
            let idx = Int((phys ^ (phys >> 13)) & UInt32(Interpreter.cacheSize - 1))
            let e = cache + idx
            if e.pointee.tag == phys && e.pointee.kind == csKind {
                let lo = mem.loadUnaligned(fromByteOffset: Int(phys), as: UInt64.self)
                if (lo & e.pointee.maskLo) == e.pointee.lo {
                    if e.pointee.maskHi == 0
                        || (mem.loadUnaligned(fromByteOffset: Int(phys) + 8, as: UInt64.self) & e.pointee.maskHi) == e.pointee.hi {
                        if csFlat || UInt64(eip) + UInt64(cacheIns[idx].length) - 1 <= UInt64(csLimit) {
                            return UnsafePointer(cacheIns + idx)
                        }
                    }
                }
            }
        }
        return try slowFetch()
    }

    func slowFetch() throws(Fault) -> DI {
        var buf: (UInt64, UInt64) = (0, 0)
        var avail = 0
        var pending: Fault? = nil
        let user = cpl == 3
        withUnsafeMutableBytes(of: &buf) { p in
            while avail < 15 {
                let off = UInt64(eip) + UInt64(avail)
                if !csFlat && off > UInt64(csLimit) { pending = .gp(0); break }
                let lin = csBase &+ UInt32(truncatingIfNeeded: off)
                do throws(Fault) {
                    p[avail] = try readLin8(lin, user: user)
                } catch {
                    pending = error
                    break
                }
                avail += 1
            }
        }
        let result = withUnsafeBytes(of: &buf) { p in
            X86Decoder.decode(UnsafeRawBufferPointer(rebasing: p[0..<avail]), defaultSize32: csKind == 2)
        }
        switch result {
        case .success(let d):
            let lin = csBase &+ eip
            if (!paging || (lin & 0xFFF) + UInt32(d.length) <= 0x1000) {
                let phys: UInt32? = paging ? try? translate(lin, write: false, user: user) : lin
                if let phys, UInt64(phys) + 16 <= memSize {
                    return fillCache(phys: phys, d)
                }
            }
            scratch.pointee = d
            return UnsafePointer(scratch)
        case .failure(.invalidOpcode):
            throw .ud
        case .failure(.tooLong):
            throw .gp(0)
        case .failure(.truncated):
            throw pending ?? .gp(0)
        }
    }

    func fillCache(phys: UInt32, _ d: DecodedInstruction) -> DI {
        let idx = Int((phys ^ (phys >> 13)) & UInt32(Interpreter.cacheSize - 1))
        let e = cache + idx
        let len = Int(d.length)
        let mlo: UInt64 = len >= 8 ? ~0 : (UInt64(1) << UInt64(len * 8)) &- 1
        let mhi: UInt64 = len <= 8 ? 0 : (len >= 16 ? ~0 : (UInt64(1) << UInt64((len - 8) * 8)) &- 1)
        e.pointee.tag = phys
        e.pointee.kind = csKind
        e.pointee.maskLo = mlo
        e.pointee.maskHi = mhi
        e.pointee.lo = mem.loadUnaligned(fromByteOffset: Int(phys), as: UInt64.self) & mlo
        e.pointee.hi = mem.loadUnaligned(fromByteOffset: Int(phys) + 8, as: UInt64.self) & mhi
        e.pointee.fast = FastKind.classify(d)
        cacheIns[idx] = d
        return UnsafePointer(cacheIns + idx)
    }

    // MARK: - Exception delivery with double/triple fault rules

    enum ExceptionClass { case benign, contributory, pageFault }

    static func exceptionClass(_ v: UInt8) -> ExceptionClass {
        switch v {
        case 0, 10, 11, 12, 13: return .contributory
        case 14: return .pageFault
        default: return .benign
        }
    }

    /// Delivers a fault/trap raised by an instruction (EIP already set to the right return
    /// address), applying the double-fault and triple-fault rules (SDM vol. 3A, 6.15, table 6-5).
    func deliverException(_ first: X86Exception) -> InterpreterStop? {
        // Delivering an event ends the STI / MOV SS shadow (the faulting instruction did not
        // complete, so the handler's first instruction would otherwise be covered).
        shadowEnd = instructionsExecuted
        var x = first
        var chain: [X86Exception] = []
        while true {
            do throws(Fault) {
                try deliver(vector: x.vector, errorCode: x.errorCode, software: false, external: true, returnEIP: eip,
                            faultClass: Interpreter.isFaultClass(x.vector))
                return nil
            } catch {
                switch error {
                case .stop(let s): return s
                case .exception(let x2):
                    chain.append(x)
                    if x.vector == 8 {
                        chain.append(x2)
                        let path = chain.map { $0.description }.joined(separator: " -> ")
                        return .shutdown(reason: "triple fault: \(path) (fault while delivering #DF)")
                    }
                    let c1 = Interpreter.exceptionClass(x.vector)
                    let c2 = Interpreter.exceptionClass(x2.vector)
                    if (c1 == .contributory && c2 == .contributory) || (c1 == .pageFault && c2 != .benign) {
                        chain.append(x2)
                        x = X86Exception(vector: 8, errorCode: 0)
                    } else {
                        x = x2
                    }
                }
            }
        }
    }

    /// Fault-class exceptions (the saved EIP points at the faulting instruction): everything an
    /// instruction raises except the #DB trap, #BP and #OF (traps) and the #DF/#MC aborts.
    static func isFaultClass(_ vector: UInt8) -> Bool {
        switch vector {
        case 0x01, 0x03, 0x04, 0x08, 0x12: return false
        default: return true
        }
    }

    // MARK: - Benchmarks

    /// Runs a loop of register and memory ALU instructions in a flat ring-0 guest and reports how
    /// many instructions ran in how many seconds (use a release build).
    public static func benchmarkALULoop(iterations: Int) -> (instructions: UInt64, seconds: Double) {
        guard let memory = try? GuestMemory(size: 1 << 20) else { return (0, 0) }
        // loop: add eax,ebx; xor ecx,eax; add [esi],eax; sub edx,[esi+4]; and ebx,0x7fffffff;
        //       inc edi; cmp edi,ebp; jne loop; hlt
        let code: [UInt8] = [
            0x01, 0xD8, 0x31, 0xC1, 0x01, 0x06, 0x2B, 0x56, 0x04, 0x81, 0xE3, 0xFF, 0xFF, 0xFF, 0x7F,
            0x47, 0x39, 0xEF, 0x75, 0xEC, 0xF4,
        ]
        try? memory.writeBytes(0x1000, code)
        var s = CPUState()
        s.cr0 = CR0.pe
        s.cs = .flatCode(selector: 0x28, dpl: 0)
        s.ss = .flatData(selector: 0x30, dpl: 0)
        s.ds = s.ss; s.es = s.ss; s.fs = s.ss; s.gs = s.ss
        s.eip = 0x1000; s.esp = 0x8000; s.esi = 0x4000; s.ebx = 3
        s.ebp = UInt32(truncatingIfNeeded: max(iterations, 1))
        let cpu = Interpreter(memory: memory, state: s)
        let start = monotonicSeconds()
        _ = cpu.run(budget: Int.max)
        let t = monotonicSeconds() - start
        return (cpu.instructionsExecuted, t)
    }

    /// Measures the fault round trip: UD2 at ring 0 → #UD delivered through the IDT → a stub
    /// `push 0; pushad; out 86h, al` → `.portOut`. Returns the average seconds per round trip.
    public static func benchmarkFaultRoundTrip(iterations: Int) -> Double {
        guard let memory = try? GuestMemory(size: 1 << 20) else { return 0 }
        let idt: UInt32 = 0x2000
        let gdt: UInt32 = 0x3000
        try? memory.write64(gdt + 0x28, SegmentDescriptor(base: 0, limit: 0xFFFFF, type: 0xB, isCodeOrData: true, dpl: 0, present: true, defaultBig: true, granularity: true).raw)
        try? memory.write64(idt + 6 * 8, GateDescriptor(offset: 0x1100, selector: 0x28, kind: .interrupt32, dpl: 0).raw)
        try? memory.writeBytes(0x1000, [0x0F, 0x0B])
        try? memory.writeBytes(0x1100, [0x6A, 0x00, 0x60, 0xE6, 0x86])
        var s = CPUState()
        s.cr0 = CR0.pe
        s.cs = .flatCode(selector: 0x28, dpl: 0)
        s.ss = .flatData(selector: 0x30, dpl: 0)
        s.ds = s.ss; s.es = s.ss
        s.gdtr = TableRegister(base: gdt, limit: 0xFF)
        s.idtr = TableRegister(base: idt, limit: 0x7FF)
        s.eip = 0x1000; s.esp = 0x8000
        let cpu = Interpreter(memory: memory, state: s)
        let n = max(iterations, 1)
        let start = monotonicSeconds()
        for _ in 0..<n {
            cpu.eip = 0x1000
            cpu.r[4] = 0x8000
            _ = cpu.run(budget: 10)
        }
        return (monotonicSeconds() - start) / Double(n)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
