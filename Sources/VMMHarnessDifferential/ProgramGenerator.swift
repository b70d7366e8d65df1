import VMMHarness
/// Seeded random x86 programs for differential testing of the two backends.
///
/// Every program is a list of instructions encoded directly as bytes, each with a short
/// Intel-syntax description. The generator keeps the programs inside rails the two backends must
/// agree on:
/// - memory operands are `[EBP+disp]` with EBP fixed at `GeneratedProgram.dataPointer` (EBP is
///   never written, except by POPAD/POPA, which are followed by a reload), so every access stays
///   in the program's own data page; string instructions get ESI/EDI/ECX loaded right before them;
/// - the stack depth is tracked: nothing pops more than the program pushed, POPFD only pops a
///   value pushed by the instruction before it (arithmetic flags and DF only: no TF, IF, AC);
/// - flags the SDM leaves undefined are tracked per instruction (`FlagEffect`), and before any
///   instruction that reads a flag that may be undefined (Jcc, SETcc, CMOVcc, ADC/SBB, RCL/RCR,
///   CMC, LAHF, PUSHFD, INTO) a `CMP r32, r32` makes all six defined again; the comparison masks
///   flags that are undefined at the point it looks at;
/// - faults are deliberate (UD2, #DE, bad selector loads, BOUND, INT3, INTO) and the runner
///   resumes after them.

/// SplitMix64 (Steele, Lea, Flood 2014): a small, fast PRNG with a 64-bit state, so programs are
/// reproducible from their seed on every platform.
public struct SplitMix64: Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in 0..<n (n > 0; n = 0 gives 0).
    public mutating func below(_ n: Int) -> Int {
        guard n > 0 else { return 0 }
        return Int(next() % UInt64(n))
    }

    /// True with probability `percent`/100.
    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    /// One element of a non-empty array (the first for an empty one is never asked for).
    public mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

/// The arithmetic flags, as EFLAGS bits.
public enum ArithmeticFlags {
    public static let cf: UInt32 = 1 << 0
    public static let pf: UInt32 = 1 << 2
    public static let af: UInt32 = 1 << 4
    public static let zf: UInt32 = 1 << 6
    public static let sf: UInt32 = 1 << 7
    public static let of: UInt32 = 1 << 11
    public static let all: UInt32 = cf | pf | af | zf | sf | of
}

/// What one instruction does to the arithmetic flags, for the undefined-flag tracking.
/// The table of which instruction gets which effect is `FlagEffect` constructors below, each with
/// the SDM (Intel SDM vol. 2, instruction reference, "Flags Affected") citation.
public struct FlagEffect: Sendable, Equatable {
    /// Flags the instruction reads (they must be defined before it runs).
    public var reads: UInt32 = 0
    /// Flags it always leaves defined.
    public var defines: UInt32 = 0
    /// Flags it may leave undefined.
    public var undefines: UInt32 = 0

    public init(reads: UInt32 = 0, defines: UInt32 = 0, undefines: UInt32 = 0) {
        self.reads = reads
        self.defines = defines
        self.undefines = undefines
    }

    typealias F = ArithmeticFlags
    /// No flag touched (MOV, LEA, NOT, XCHG, MOVZX, CBW, PUSH, ...).
    static let none = FlagEffect()
    /// ADD, SUB, CMP, NEG, XADD, CMPXCHG, CMPS/SCAS: "OF, SF, ZF, AF, CF, PF set according to the result".
    static let arith = FlagEffect(defines: F.all)
    /// ADC, SBB: as ADD/SUB, and they read CF.
    static let arithWithCarry = FlagEffect(reads: F.cf, defines: F.all)
    /// AND, OR, XOR, TEST: "OF and CF cleared; SF, ZF, PF set according to the result; AF undefined".
    static let logic = FlagEffect(defines: F.cf | F.of | F.sf | F.zf | F.pf, undefines: F.af)
    /// INC, DEC: "CF not affected; OF, SF, ZF, AF, PF set according to the result".
    static let incDec = FlagEffect(defines: F.of | F.sf | F.zf | F.af | F.pf)
    /// MUL, IMUL (all forms): "OF and CF ...; SF, ZF, AF, PF undefined".
    static let multiply = FlagEffect(defines: F.cf | F.of, undefines: F.sf | F.zf | F.af | F.pf)
    /// DIV, IDIV: "CF, OF, SF, ZF, AF, PF undefined".
    static let divide = FlagEffect(undefines: F.all)
    /// BT, BTS, BTR, BTC: "CF contains the selected bit; ZF unaffected; OF, SF, AF, PF undefined".
    static let bitTest = FlagEffect(defines: F.cf, undefines: F.of | F.sf | F.af | F.pf)
    /// BSF, BSR (non-zero source): "ZF cleared; CF, OF, SF, AF, PF undefined".
    static let bitScan = FlagEffect(defines: F.zf, undefines: F.cf | F.of | F.sf | F.af | F.pf)
    /// SAHF: "SF, ZF, AF, PF, CF loaded from AH" (OF unaffected).
    static let sahf = FlagEffect(defines: F.sf | F.zf | F.af | F.pf | F.cf)
    /// LAHF reads SF, ZF, AF, PF, CF into AH.
    static let lahf = FlagEffect(reads: F.sf | F.zf | F.af | F.pf | F.cf)
    /// CLC, STC: CF defined. CMC complements CF: it reads it.
    static let setCarry = FlagEffect(defines: F.cf)
    static let cmc = FlagEffect(reads: F.cf, defines: F.cf)
    /// POPFD/POPF of a value the program pushed: all flags defined.
    static let popFlags = FlagEffect(defines: F.all)
    /// PUSHFD/PUSHF store every flag.
    static let pushFlags = FlagEffect(reads: F.all)

    /// AAM, AAD. The SDM defines SF, ZF and PF "according to the resulting binary value in the AL
    /// register" (OF, AF, CF undefined), but KVM's instruction emulator (em_aam/em_aad in
    /// arch/x86/kvm/emulate.c, which the PVM hosts run every instruction through) sets them from
    /// the whole 32-bit EAX: `D5 0A` with EAX = 8000_0000h gives SF = 1, ZF = 0 on KVM, SF = 0,
    /// ZF = 1 on the interpreter (and on hardware). Found by this differential test; until the
    /// host is fixed, all six flags of AAM/AAD count as undefined for the comparison.
    static let asciiAdjustHostDeviation = FlagEffect(undefines: F.all)

    /// Flags a condition code (the low nibble of Jcc/SETcc/CMOVcc) reads (SDM vol. 1, appendix B).
    static func condition(_ cc: UInt8) -> FlagEffect {
        let r: UInt32
        switch cc >> 1 {
        case 0: r = F.of
        case 1: r = F.cf
        case 2: r = F.zf
        case 3: r = F.cf | F.zf
        case 4: r = F.sf
        case 5: r = F.pf
        case 6: r = F.sf | F.of
        default: r = F.zf | F.sf | F.of
        }
        return FlagEffect(reads: r)
    }

    /// Shifts and rotates (group 2: /0 ROL /1 ROR /2 RCL /3 RCR /4 SHL /5 SHR /7 SAR) of a
    /// `bits`-wide operand by `count` (nil: by CL, not known to the generator). SDM "SAL/SAR/SHL/SHR",
    /// "RCL/RCR/ROL/ROR":
    /// - a masked count of 0 affects no flag;
    /// - ROL/ROR: CF = the bit rotated into it; OF defined only for count 1; SF, ZF, AF, PF unaffected;
    /// - RCL/RCR: read CF, CF defined; OF only for count 1;
    /// - SHL/SHR: CF = last bit shifted out, undefined when the count is >= the operand size;
    ///   OF only for count 1; SF, ZF, PF by the result; AF undefined for a non-zero count;
    /// - SAR: as SHL/SHR, but CF stays defined for large counts (the sign bit).
    /// For an unknown count a flag that is "defined or unaffected" keeps its state, and a flag that
    /// may become undefined is counted as undefined.
    static func shift(_ op: UInt8, bits: Int, count: Int?) -> FlagEffect {
        let rotate = op <= 3
        let reads: UInt32 = (op == 2 || op == 3) ? F.cf : 0
        guard let count else {
            if rotate { return FlagEffect(reads: reads, undefines: F.of) }
            let cfMaybe: UInt32 = (op == 7 || bits == 32) ? 0 : F.cf
            return FlagEffect(undefines: F.of | F.af | cfMaybe)
        }
        let masked = count & 31
        if masked == 0 { return FlagEffect() }
        var e = FlagEffect(reads: reads)
        let of: (def: UInt32, undef: UInt32) = masked == 1 ? (F.of, 0) : (0, F.of)
        e.defines = of.def
        e.undefines = of.undef
        if rotate {
            e.defines |= F.cf
        } else {
            e.defines |= F.sf | F.zf | F.pf
            e.undefines |= F.af
            if op != 7 && masked >= bits { e.undefines |= F.cf } else { e.defines |= F.cf }
        }
        return e
    }

    /// SHLD/SHRD by `count` (nil: CL) (SDM "SHLD"/"SHRD"): a count of 0 affects no flag; otherwise
    /// CF = last bit shifted out, SF, ZF, PF by the result, OF only for count 1, AF undefined.
    static func doubleShift(count: Int?) -> FlagEffect {
        guard let count else { return FlagEffect(undefines: F.of | F.af) }
        let masked = count & 31
        if masked == 0 { return FlagEffect() }
        var e = FlagEffect(defines: F.cf | F.sf | F.zf | F.pf, undefines: F.af)
        if masked == 1 { e.defines |= F.of } else { e.undefines |= F.of }
        return e
    }
}

/// One generated instruction.
public struct GeneratedInstruction: Sendable, Equatable {
    /// Its encoding.
    public var bytes: [UInt8]
    /// A short Intel-syntax description.
    public var text: String
    /// What it does to the flags.
    public var flags: FlagEffect
    /// Offset from the start of the code.
    public var offset: Int
    /// Whether it is a deliberate fault or trap (UD2, #DE setups, bad selector, BOUND, INT3, INTO).
    public var mayFault: Bool

    /// `bytes` in hex, separated by spaces.
    public var hexBytes: String { bytes.map { hex($0, width: 2, prefix: "") }.joined(separator: " ") }
}

/// A generated program: its code, its initial data page and the undefined-flag masks.
public struct GeneratedProgram: Sendable {
    /// Where the code starts (the image base, entered at its first byte).
    public static let codeBase: UInt32 = MemoryMap.imageBase
    /// Room for the code; the rest of it is HLT bytes, so a stray jump stops.
    public static let codeSize = 0x1000
    /// The data page the program owns (in the image, right after the code).
    public static let dataBase: UInt32 = codeBase + UInt32(codeSize)
    public static let dataSize = 0x1000
    /// EBP throughout the program: `[EBP+disp8]` reaches dataBase ..< dataBase + 100h.
    public static let dataPointer: UInt32 = dataBase + 0x80
    /// Where string instructions work (ESI and EDI are set into this range).
    public static let stringArea: UInt32 = dataBase + 0x400
    /// The initial stack top (the runtime's ring-0 stack).
    public static let stackTop: UInt32 = MemoryMap.ring0StackTop

    /// The seed the program was generated from.
    public let seed: UInt64
    /// The instructions, in order, followed (not listed) by the final HLT.
    public let instructions: [GeneratedInstruction]
    /// `undefinedFlagsBefore[i]`: arithmetic flags that may be undefined when instruction `i`
    /// starts (on any path reaching it); the last entry is for the final HLT.
    public let undefinedFlagsBefore: [UInt32]
    /// The data page's initial bytes.
    public let initialData: [UInt8]

    /// The code bytes of the first `count` instructions (all by default) and a HLT. With a prefix,
    /// every later byte of the full program's code is HLT too, so a forward jump over the cut
    /// stops on a HLT at the start of an instruction of the full program.
    public func code(prefix count: Int? = nil) -> [UInt8] {
        let n = min(count ?? instructions.count, instructions.count)
        var out: [UInt8] = []
        for i in instructions.prefix(n) { out += i.bytes }
        let full = instructions.reduce(0) { $0 + $1.bytes.count }
        out += [UInt8](repeating: 0xF4, count: full - out.count + 1)
        return out
    }

    /// The guest image: code padded with HLT to `codeSize`, then the data page.
    public func image(prefix count: Int? = nil) -> GuestImage {
        var bytes = code(prefix: count)
        if bytes.count < Self.codeSize { bytes += [UInt8](repeating: 0xF4, count: Self.codeSize - bytes.count) }
        bytes += initialData
        let suffix = count.map { " prefix \($0)" } ?? ""
        return GuestImage(name: "random program seed \(hex(seed, width: 16, prefix: "0x"))\(suffix)", bytes: bytes)
    }

    /// The index of the instruction starting at guest address `address` (`instructions.count`
    /// for the final HLT), or nil.
    public func index(at address: UInt32) -> Int? {
        guard address >= Self.codeBase else { return nil }
        let offset = Int(address - Self.codeBase)
        var lo = 0, hi = instructions.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if instructions[mid].offset < offset { lo = mid + 1 } else { hi = mid }
        }
        if lo < instructions.count, instructions[lo].offset == offset { return lo }
        if lo == instructions.count, offset == (instructions.last.map { $0.offset + $0.bytes.count } ?? 0) {
            return instructions.count
        }
        return nil
    }

    /// Flags that may be undefined at `address` (all arithmetic flags where it is not an
    /// instruction start of the program).
    public func undefinedFlags(at address: UInt32) -> UInt32 {
        guard let i = index(at: address), i < undefinedFlagsBefore.count else { return ArithmeticFlags.all }
        return undefinedFlagsBefore[i]
    }

    /// A readable listing, one instruction a line, with the offset and bytes.
    public var listing: String {
        instructions.enumerated().map { i, ins in
            "\(String(i).leftPad(3)) \(hex(Self.codeBase + UInt32(ins.offset), prefix: "")): \(ins.hexBytes.rightPad(30)) \(ins.text)"
        }.joined(separator: "\n")
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    func rightPad(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

/// Generates `GeneratedProgram`s from a seed. The same seed and length always give the same bytes.
public struct ProgramGenerator: Sendable {
    /// The seed.
    public let seed: UInt64
    /// About how many instructions (not counting the set-up and the helpers inserted before some).
    public let length: Int

    public init(seed: UInt64, length: Int = 48) {
        self.seed = seed
        self.length = length
    }

    /// Generates the program.
    public func generate() -> GeneratedProgram {
        var e = Emitter(rng: SplitMix64(seed: seed))
        e.prologue()
        var n = 0
        while n < length {
            e.randomItem(topLevel: true)
            n += 1
        }
        e.undefBefore.append(e.undef)
        var data = [UInt8](repeating: 0, count: GeneratedProgram.dataSize)
        for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: e.rng.next()) }
        return GeneratedProgram(seed: seed, instructions: e.out, undefinedFlagsBefore: e.undefBefore, initialData: data)
    }
}

/// The generator's working state.
struct Emitter {
    var rng: SplitMix64
    var out: [GeneratedInstruction] = []
    var undefBefore: [UInt32] = []
    /// Flags that may be undefined now.
    var undef: UInt32 = 0
    /// Prefixes (LOCK, segment override) for the next instruction `emit` appends, and their text.
    var prefix: [UInt8] = []
    var prefixText = ""
    /// Bytes the program has pushed and not popped.
    var stackDepth = 0
    /// Byte size of the code so far.
    var size = 0

    typealias F = ArithmeticFlags
    static let maxStack = 256

    static let r32 = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
    static let r16 = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]
    static let r8 = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"]
    /// Registers a generated instruction may write (not ESP, not EBP).
    static let writable: [UInt8] = [0, 1, 2, 3, 6, 7]
    static let aluNames = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
    static let shiftNames = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"]
    static let ccNames = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]

    init(rng: SplitMix64) { self.rng = rng }

    // MARK: emission

    /// Appends one instruction; makes the flags it reads defined first.
    mutating func emit(_ bytes: [UInt8], _ text: String, _ flags: FlagEffect = .none, mayFault: Bool = false) {
        let pre = prefix, preText = prefixText
        prefix = []
        prefixText = ""
        if flags.reads & undef != 0 { defineFlags() }
        let bytes = pre + bytes
        undefBefore.append(undef)
        out.append(GeneratedInstruction(bytes: bytes, text: preText + text, flags: flags, offset: size, mayFault: mayFault))
        size += bytes.count
        undef = (undef & ~flags.defines) | flags.undefines
    }

    /// CMP r32, r32: defines all six arithmetic flags.
    mutating func defineFlags() {
        let a = UInt8(rng.below(8)), b = UInt8(rng.below(8))
        emit([0x39, modrm(3, a, b)], "cmp \(Self.r32[Int(b)]), \(Self.r32[Int(a)])", .arith)
    }

    func modrm(_ mod: UInt8, _ reg: UInt8, _ rm: UInt8) -> UInt8 { mod << 6 | (reg & 7) << 3 | (rm & 7) }

    func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)] }
    func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }

    func regName(_ size: Int, _ r: UInt8) -> String {
        switch size {
        case 1: return Self.r8[Int(r & 7)]
        case 2: return Self.r16[Int(r & 7)]
        default: return Self.r32[Int(r & 7)]
        }
    }

    func sizeName(_ size: Int) -> String { size == 1 ? "byte" : size == 2 ? "word" : "dword" }

    /// The 66h prefix for a 16-bit operand size.
    func osPrefix(_ size: Int) -> [UInt8] { size == 2 ? [0x66] : [] }

    mutating func randomSize() -> Int { [1, 2, 4, 4, 4][rng.below(5)] }
    mutating func randomWideSize() -> Int { rng.chance(25) ? 2 : 4 }
    mutating func writableReg() -> UInt8 { rng.pick(Self.writable) }
    /// A register a `size`-wide instruction may write (every byte register is allowed).
    mutating func destReg(_ size: Int) -> UInt8 { size == 1 ? UInt8(rng.below(8)) : writableReg() }

    /// Interesting immediates: edges of the signed and unsigned ranges, small values, random bits.
    mutating func imm32() -> UInt32 {
        switch rng.below(10) {
        case 0: return 0
        case 1: return 1
        case 2: return 0xFFFF_FFFF
        case 3: return rng.pick([0x7FFF_FFFF, 0x8000_0000, 0x7FFF, 0x8000, 0x7F, 0x80, 0xFF, 0xFFFF])
        case 4, 5: return UInt32(rng.below(64))
        default: return UInt32(truncatingIfNeeded: rng.next())
        }
    }

    func immBytes(_ size: Int, _ v: UInt32) -> [UInt8] {
        switch size {
        case 1: return [UInt8(truncatingIfNeeded: v)]
        case 2: return le16(UInt16(truncatingIfNeeded: v))
        default: return le32(v)
        }
    }

    /// A memory operand `[EBP+disp]` for ModRM.reg `reg`, `width` bytes wide: the ModRM/SIB/disp
    /// bytes and the text. Three encodings: disp8, SIB without index + disp8, disp32.
    mutating func memOperand(reg: UInt8, width: Int) -> ([UInt8], String) {
        if rng.chance(5) {
            // A segment override: every data segment is flat (CS is left out: writes through it fault).
            let i = rng.below(5)
            prefix.append([0x26, 0x36, 0x3E, 0x64, 0x65][i])
            prefixText += ["es: ", "ss: ", "ds: ", "fs: ", "gs: "][i]
        }
        let d = Int8(rng.below(256 - width) - 128)
        let text = d < 0 ? "[ebp-\(hex(UInt8(-Int(d)), width: 2, prefix: "0x"))]" : "[ebp+\(hex(UInt8(d), width: 2, prefix: "0x"))]"
        let db = UInt8(bitPattern: d)
        switch rng.below(4) {
        case 0: return ([modrm(1, reg, 4), 0x25, db], text)
        case 1: return ([modrm(2, reg, 5)] + le32(UInt32(bitPattern: Int32(d))), text)
        default: return ([modrm(1, reg, 5), db], text)
        }
    }

    /// A LOCK prefix, sometimes, on an instruction that allows it (a read-modify-write of memory).
    mutating func lock(_ allowed: Bool) {
        if allowed && rng.chance(15) {
            prefix.append(0xF0)
            prefixText += "lock "
        }
    }

    // MARK: program structure

    mutating func prologue() {
        for r in Self.writable {
            let v = imm32()
            emit([0xB8 + r] + le32(v), "mov \(Self.r32[Int(r)]), \(hex(v, prefix: "0x"))")
        }
        emit([0xBD] + le32(GeneratedProgram.dataPointer), "mov ebp, \(hex(GeneratedProgram.dataPointer, prefix: "0x"))")
        pushPopFlags()
    }

    /// One random item: an instruction, or a short group (set-up + instruction, Jcc over a block).
    mutating func randomItem(topLevel: Bool) {
        let roll = rng.below(topLevel ? 100 : 70)
        switch roll {
        case 0..<14: alu()
        case 14..<18: testOp()
        case 18..<23: unary()
        case 23..<31: shift()
        case 31..<34: doubleShift()
        case 34..<39: mulDiv()
        case 39..<42: imul()
        case 42..<45: setcc()
        case 45..<48: cmovcc()
        case 48..<51: bitTest()
        case 51..<53: bitScan()
        case 53..<57: exchange()
        case 57..<59: extend()
        case 59..<61: lea()
        case 61..<63: convert()
        case 63..<66: flagsOps()
        case 66..<70: mov()
        // Not inside a jumped-over block: stack and string groups, jumps, faults.
        case 70..<79: stack()
        case 79..<85: string()
        case 85..<93: jump()
        case 93..<97: fault()
        default: misc()
        }
    }

    // MARK: ALU

    mutating func alu() {
        let op = UInt8(rng.below(8))
        let size = randomSize()
        let fx: FlagEffect = (op == 2 || op == 3) ? .arithWithCarry : (op == 1 || op == 4 || op == 6) ? .logic : .arith
        let name = Self.aluNames[Int(op)]
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        switch rng.below(6) {
        case 0: // r/m(reg), reg
            let d = op == 7 ? UInt8(rng.below(8)) : destReg(size), s = UInt8(rng.below(8))
            emit(p + [op << 3 | w, modrm(3, s, d)], "\(name) \(regName(size, d)), \(regName(size, s))", fx)
        case 1: // reg, r/m(reg)
            let d = op == 7 ? UInt8(rng.below(8)) : destReg(size), s = UInt8(rng.below(8))
            emit(p + [op << 3 | 2 | w, modrm(3, d, s)], "\(name) \(regName(size, d)), \(regName(size, s))", fx)
        case 2: // reg, imm
            let v = imm32()
            let d = destReg(size)
            if d == 0 && rng.chance(40) {
                emit(p + [op << 3 | 4 | w] + immBytes(size, v), "\(name) \(regName(size, 0)), \(hex(v, width: 1, prefix: "0x"))", fx)
            } else if size != 1 && rng.chance(40) {
                let b = UInt8(truncatingIfNeeded: v)
                emit(p + [0x83, modrm(3, op, d), b], "\(name) \(regName(size, d)), \(hex(b, width: 2, prefix: "0x")) (sign-extended)", fx)
            } else {
                emit(p + [size == 1 ? 0x80 : 0x81, modrm(3, op, d)] + immBytes(size, v),
                     "\(name) \(regName(size, d)), \(hex(v, width: 1, prefix: "0x"))", fx)
            }
        case 3: // reg, mem
            let d = destReg(size)
            let (m, t) = memOperand(reg: d, width: size)
            emit(p + [op << 3 | 2 | w] + m, "\(name) \(regName(size, d)), \(sizeName(size)) \(t)", fx)
        case 4: // mem, reg
            let s = UInt8(rng.below(8))
            let (m, t) = memOperand(reg: s, width: size)
            lock(op != 7)
            emit(p + [op << 3 | w] + m, "\(name) \(sizeName(size)) \(t), \(regName(size, s))", fx)
        default: // mem, imm
            let v = imm32()
            let (m, t) = memOperand(reg: op, width: size)
            lock(op != 7)
            if size != 1 && rng.chance(40) {
                let b = UInt8(truncatingIfNeeded: v)
                emit(p + [0x83] + m + [b], "\(name) \(sizeName(size)) \(t), \(hex(b, width: 2, prefix: "0x")) (sign-extended)", fx)
            } else {
                emit(p + [size == 1 ? 0x80 : 0x81] + m + immBytes(size, v), "\(name) \(sizeName(size)) \(t), \(hex(v, width: 1, prefix: "0x"))", fx)
            }
        }
    }

    mutating func testOp() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        switch rng.below(4) {
        case 0:
            let a = UInt8(rng.below(8)), b = UInt8(rng.below(8))
            emit(p + [0x84 | w, modrm(3, a, b)], "test \(regName(size, b)), \(regName(size, a))", .logic)
        case 1:
            let a = UInt8(rng.below(8))
            let (m, t) = memOperand(reg: a, width: size)
            emit(p + [0x84 | w] + m, "test \(sizeName(size)) \(t), \(regName(size, a))", .logic)
        case 2:
            let v = imm32()
            emit(p + [0xA8 | w] + immBytes(size, v), "test \(regName(size, 0)), \(hex(v, width: 1, prefix: "0x"))", .logic)
        default:
            let v = imm32()
            if rng.chance(50) {
                let r = UInt8(rng.below(8))
                emit(p + [0xF6 | w, modrm(3, 0, r)] + immBytes(size, v), "test \(regName(size, r)), \(hex(v, width: 1, prefix: "0x"))", .logic)
            } else {
                let (m, t) = memOperand(reg: 0, width: size)
                emit(p + [0xF6 | w] + m + immBytes(size, v), "test \(sizeName(size)) \(t), \(hex(v, width: 1, prefix: "0x"))", .logic)
            }
        }
    }

    /// INC, DEC, NEG, NOT on a register or memory.
    mutating func unary() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        let kind = rng.below(4)   // 0 inc, 1 dec, 2 not, 3 neg
        let names = ["inc", "dec", "not", "neg"]
        let fx: FlagEffect = kind < 2 ? .incDec : kind == 2 ? .none : .arith
        let (opcode, reg): (UInt8, UInt8) = kind < 2 ? (0xFE | w, UInt8(kind)) : (0xF6 | w, UInt8(kind))
        if rng.chance(60) {
            let r = destReg(size)
            if kind < 2 && size != 1 && rng.chance(50) {
                emit(p + [UInt8(kind == 0 ? 0x40 : 0x48) + r], "\(names[kind]) \(regName(size, r))", fx)
            } else {
                emit(p + [opcode, modrm(3, reg, r)], "\(names[kind]) \(regName(size, r))", fx)
            }
        } else {
            let (m, t) = memOperand(reg: reg, width: size)
            lock(true)
            emit(p + [opcode] + m, "\(names[kind]) \(sizeName(size)) \(t)", fx)
        }
    }

    // MARK: shifts

    mutating func shift() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        var op = UInt8(rng.below(7))
        if op == 6 { op = 7 }   // /6 (SAL alias) is not generated; SAR instead
        let name = Self.shiftNames[Int(op)]
        let useMem = rng.chance(30)
        let r = destReg(size)
        var operandBytes: [UInt8] = [modrm(3, op, r)]
        var operandText = regName(size, r)
        if useMem {
            let (m, t) = memOperand(reg: op, width: size)
            operandBytes = m
            operandText = "\(sizeName(size)) \(t)"
        }
        switch rng.below(3) {
        case 0:
            emit(p + [0xD0 | w] + operandBytes, "\(name) \(operandText), 1", .shift(op, bits: size * 8, count: 1))
        case 1:
            emit(p + [0xD2 | w] + operandBytes, "\(name) \(operandText), cl", .shift(op, bits: size * 8, count: nil))
        default:
            let count = rng.chance(80) ? rng.below(33) : rng.below(256)
            emit(p + [0xC0 | w] + operandBytes + [UInt8(count)], "\(name) \(operandText), \(count)",
                 .shift(op, bits: size * 8, count: count))
        }
    }

    /// SHLD/SHRD. The 16-bit forms only with an immediate count up to 16 (larger counts leave the
    /// result undefined, SDM "SHLD").
    mutating func doubleShift() {
        let size = randomWideSize()
        let p = osPrefix(size)
        let left = rng.chance(50)
        let name = left ? "shld" : "shrd"
        let src = UInt8(rng.below(8))
        var dst = writableReg()
        var operandBytes: [UInt8] = [modrm(3, src, dst)]
        var text = regName(size, dst)
        if rng.chance(30) {
            let (m, t) = memOperand(reg: src, width: size)
            operandBytes = m
            text = "\(sizeName(size)) \(t)"
            dst = 0xFF
        }
        if size == 4 && rng.chance(40) {
            emit(p + [0x0F, left ? 0xA5 : 0xAD] + operandBytes, "\(name) \(text), \(regName(size, src)), cl", .doubleShift(count: nil))
        } else {
            let count = size == 2 ? rng.below(17) : rng.below(32)
            emit(p + [0x0F, left ? 0xA4 : 0xAC] + operandBytes + [UInt8(count)], "\(name) \(text), \(regName(size, src)), \(count)",
                 .doubleShift(count: count))
        }
    }

    // MARK: multiply and divide

    /// MUL, IMUL (one operand), DIV, IDIV; divisions sometimes get EDX set up so they do not
    /// overflow, sometimes a zeroed divisor (#DE).
    mutating func mulDiv() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        let kind = UInt8(4 + rng.below(4))   // /4 mul /5 imul /6 div /7 idiv
        let names = ["mul", "imul", "div", "idiv"]
        let name = names[Int(kind - 4)]
        let divide = kind >= 6
        let fx: FlagEffect = divide ? .divide : .multiply
        if divide && rng.chance(50) {
            // Make the dividend fit: zero- or sign-extend the low part.
            switch (size, kind) {
            case (1, 6): emit([0x0F, 0xB6, modrm(3, 0, 0)], "movzx eax, al")
            case (1, _): emit([0x66, 0x98], "cbw")
            case (2, 6): emit([0x66, 0x31, modrm(3, 2, 2)], "xor dx, dx", .logic)
            case (2, _): emit([0x66, 0x99], "cwd")
            case (_, 6): emit([0x31, modrm(3, 2, 2)], "xor edx, edx", .logic)
            default: emit([0x99], "cdq")
            }
        }
        if rng.chance(70) {
            var r = size == 1 ? UInt8(rng.below(8)) : writableReg()
            if divide && rng.chance(15) {
                // A zero divisor: #DE. (Not AL/AH/EAX/EDX, which hold the dividend.)
                r = size == 1 ? rng.pick([1, 3, 5, 7]) : rng.pick([1, 3, 6, 7])
                emit(osPrefix(size) + [0x30 | w, modrm(3, r, r)], "xor \(regName(size, r)), \(regName(size, r))", .logic)
            }
            emit(p + [0xF6 | w, modrm(3, kind, r)], "\(name) \(regName(size, r))", fx, mayFault: divide)
        } else {
            let (m, t) = memOperand(reg: kind, width: size)
            emit(p + [0xF6 | w] + m, "\(name) \(sizeName(size)) \(t)", fx, mayFault: divide)
        }
    }

    /// IMUL r, r/m (0F AF) and IMUL r, r/m, imm (69, 6B).
    mutating func imul() {
        let size = randomWideSize()
        let p = osPrefix(size)
        let d = writableReg()
        var src: [UInt8]
        var text: String
        if rng.chance(65) {
            let s = UInt8(rng.below(8))
            src = [modrm(3, d, s)]
            text = regName(size, s)
        } else {
            let (m, t) = memOperand(reg: d, width: size)
            src = m
            text = "\(sizeName(size)) \(t)"
        }
        switch rng.below(3) {
        case 0:
            emit(p + [0x0F, 0xAF] + src, "imul \(regName(size, d)), \(text)", .multiply)
        case 1:
            let v = imm32()
            emit(p + [0x69] + src + immBytes(size, v), "imul \(regName(size, d)), \(text), \(hex(v, width: 1, prefix: "0x"))", .multiply)
        default:
            let b = UInt8(truncatingIfNeeded: imm32())
            emit(p + [0x6B] + src + [b], "imul \(regName(size, d)), \(text), \(hex(b, width: 2, prefix: "0x")) (sign-extended)", .multiply)
        }
    }

    // MARK: conditional

    mutating func setcc() {
        let cc = UInt8(rng.below(16))
        if rng.chance(70) {
            let r = UInt8(rng.below(8))
            emit([0x0F, 0x90 + cc, modrm(3, 0, r)], "set\(Self.ccNames[Int(cc)]) \(regName(1, r))", .condition(cc))
        } else {
            let (m, t) = memOperand(reg: 0, width: 1)
            emit([0x0F, 0x90 + cc] + m, "set\(Self.ccNames[Int(cc)]) byte \(t)", .condition(cc))
        }
    }

    mutating func cmovcc() {
        let cc = UInt8(rng.below(16))
        let size = randomWideSize()
        let p = osPrefix(size)
        let d = writableReg()
        if rng.chance(65) {
            let s = UInt8(rng.below(8))
            emit(p + [0x0F, 0x40 + cc, modrm(3, d, s)], "cmov\(Self.ccNames[Int(cc)]) \(regName(size, d)), \(regName(size, s))", .condition(cc))
        } else {
            let (m, t) = memOperand(reg: d, width: size)
            emit(p + [0x0F, 0x40 + cc] + m, "cmov\(Self.ccNames[Int(cc)]) \(regName(size, d)), \(sizeName(size)) \(t)", .condition(cc))
        }
    }

    /// Jcc rel8 forward over a block of one to four simple instructions.
    mutating func jump() {
        let cc = UInt8(rng.below(16))
        let fx = FlagEffect.condition(cc)
        if fx.reads & undef != 0 { defineFlags() }
        // The branch: Jcc rel8 mostly, else Jcc rel32, JMP rel8, JECXZ, LOOP/LOOPE/LOOPNE.
        let kind = rng.below(20)
        var name = "j\(Self.ccNames[Int(cc)])"
        var branch: [UInt8] = [0x70 + cc, 0]
        var branchFx = fx
        switch kind {
        case 0, 1: branch = [0x0F, 0x80 + cc, 0, 0, 0, 0]
        case 2: branch = [0xEB, 0]; name = "jmp"; branchFx = .none
        case 3: branch = [0xE3, 0]; name = "jecxz"; branchFx = .none
        case 4: branch = [0xE2, 0]; name = "loop"; branchFx = .none
        case 5: branch = [0xE1, 0]; name = "loope"; branchFx = FlagEffect(reads: F.zf)
        case 6: branch = [0xE0, 0]; name = "loopne"; branchFx = FlagEffect(reads: F.zf)
        default: break
        }
        if branchFx.reads & undef != 0 { defineFlags() }
        let jumpIndex = out.count
        emit(branch, "\(name) (placeholder)", branchFx)
        let atJump = undef
        let startSize = size
        let count = 1 + rng.below(4)
        for _ in 0..<count { randomItem(topLevel: false) }
        let distance = size - startSize
        guard distance <= 127 else {
            // Never for blocks of this size; kept safe: jump to the next instruction instead.
            out[jumpIndex].text = "\(name) +0"
            undef |= atJump
            return
        }
        if branch.count == 6 {
            out[jumpIndex].bytes[2] = UInt8(distance)
        } else {
            out[jumpIndex].bytes[1] = UInt8(distance)
        }
        let target = GeneratedProgram.codeBase + UInt32(size)
        out[jumpIndex].text = "\(name)\(branch.count == 6 ? " near" : "") \(hex(target, prefix: "0x")) (skips \(out.count - jumpIndex - 1))"
        undef |= atJump
    }

    // MARK: bits

    /// BT/BTS/BTR/BTC by register or immediate; with a memory operand and a register offset the
    /// offset is first masked to 0..7Fh (the bit string may reach beyond the operand).
    mutating func bitTest() {
        let size = randomWideSize()
        let p = osPrefix(size)
        let kind = UInt8(rng.below(4))   // bt bts btr btc
        let names = ["bt", "bts", "btr", "btc"]
        let useMem = rng.chance(40)
        if rng.chance(50) {
            // Immediate form: 0F BA /4../7 ib.
            let b = UInt8(rng.below(256))
            if useMem {
                let (m, t) = memOperand(reg: 4 + kind, width: size)
                lock(kind != 0)
                emit(p + [0x0F, 0xBA] + m + [b], "\(names[Int(kind)]) \(sizeName(size)) \(t), \(b)", .bitTest)
            } else {
                let r = kind == 0 ? UInt8(rng.below(8)) : writableReg()
                emit(p + [0x0F, 0xBA, modrm(3, 4 + kind, r), b], "\(names[Int(kind)]) \(regName(size, r)), \(b)", .bitTest)
            }
        } else {
            let opcode: UInt8 = [0xA3, 0xAB, 0xB3, 0xBB][Int(kind)]
            if useMem {
                let o = writableReg()
                emit(p + [0x83, modrm(3, 4, o), 0x7F], "and \(regName(size, o)), 0x7F", .logic)
                let (m, t) = memOperand(reg: o, width: 16)
                lock(kind != 0)
                emit(p + [0x0F, opcode] + m, "\(names[Int(kind)]) \(sizeName(size)) \(t), \(regName(size, o))", .bitTest)
            } else {
                let o = UInt8(rng.below(8))
                let r = kind == 0 ? UInt8(rng.below(8)) : writableReg()
                emit(p + [0x0F, opcode, modrm(3, o, r)], "\(names[Int(kind)]) \(regName(size, r)), \(regName(size, o))", .bitTest)
            }
        }
    }

    /// BSF/BSR with a source made non-zero first (with a zero source Intel leaves the
    /// destination undefined, SDM "BSF").
    mutating func bitScan() {
        let size = randomWideSize()
        let p = osPrefix(size)
        let forward = rng.chance(50)
        let name = forward ? "bsf" : "bsr"
        let d = writableReg()
        let bit = UInt8(1) << UInt8(rng.below(7))
        if rng.chance(60) {
            let s = writableReg()
            emit(p + [0x83, modrm(3, 1, s), bit], "or \(regName(size, s)), \(hex(bit, width: 2, prefix: "0x"))", .logic)
            emit(p + [0x0F, forward ? 0xBC : 0xBD, modrm(3, d, s)], "\(name) \(regName(size, d)), \(regName(size, s))", .bitScan)
        } else {
            let (m, t) = memOperand(reg: 1, width: size)
            emit(p + [0x83] + m + [bit], "or \(sizeName(size)) \(t), \(hex(bit, width: 2, prefix: "0x"))", .logic)
            var m2 = m
            m2[0] = (m2[0] & 0xC7) | (d << 3)
            emit(p + [0x0F, forward ? 0xBC : 0xBD] + m2, "\(name) \(regName(size, d)), \(sizeName(size)) \(t)", .bitScan)
        }
    }

    // MARK: data movement

    /// XCHG, XADD, CMPXCHG.
    mutating func exchange() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        let a = destReg(size), b = destReg(size)
        let useMem = rng.chance(40)
        var operand: [UInt8] = [modrm(3, a, b)]
        var text = regName(size, b)
        if useMem {
            let (m, t) = memOperand(reg: a, width: size)
            operand = m
            text = "\(sizeName(size)) \(t)"
        }
        lock(useMem)
        switch rng.below(4) {
        case 0:
            if size != 1 && !useMem && rng.chance(50) {
                emit(p + [0x90 + b], "xchg \(regName(size, 0)), \(regName(size, b))")
            } else {
                emit(p + [0x86 | w] + operand, "xchg \(text), \(regName(size, a))")
            }
        case 1:
            emit(p + [0x0F, 0xC0 | w] + operand, "xadd \(text), \(regName(size, a))", .arith)
        default:
            emit(p + [0x0F, 0xB0 | w] + operand, "cmpxchg \(text), \(regName(size, a))", .arith)
        }
    }

    /// MOVZX, MOVSX.
    mutating func extend() {
        let wide = rng.chance(30)
        let size = wide ? 4 : randomWideSize()
        let signed = rng.chance(50)
        let p = osPrefix(size)
        let opcode: UInt8 = (signed ? 0xBE : 0xB6) | (wide ? 1 : 0)
        let name = signed ? "movsx" : "movzx"
        let srcSize = wide ? 2 : 1
        let d = writableReg()
        if rng.chance(60) {
            let s = UInt8(rng.below(8))
            emit(p + [0x0F, opcode, modrm(3, d, s)], "\(name) \(regName(size, d)), \(regName(srcSize, s))")
        } else {
            let (m, t) = memOperand(reg: d, width: srcSize)
            emit(p + [0x0F, opcode] + m, "\(name) \(regName(size, d)), \(sizeName(srcSize)) \(t)")
        }
    }

    /// LEA with any 32-bit (or, with 67h, 16-bit) addressing form: it only computes the address.
    mutating func lea() {
        let size = randomWideSize()
        let d = writableReg()
        var bytes = osPrefix(size)
        if rng.chance(20) {
            bytes += [0x67, 0x8D]
            let mod = UInt8(rng.below(3)), rm = UInt8(rng.below(8))
            bytes.append(modrm(mod, d, rm))
            if mod == 1 { bytes.append(UInt8(rng.below(256))) }
            if mod == 2 || (mod == 0 && rm == 6) { bytes += le16(UInt16(truncatingIfNeeded: imm32())) }
            emit(bytes, "lea \(regName(size, d)), [16-bit address, modrm \(hex(modrm(mod, d, rm), width: 2, prefix: "0x"))]")
            return
        }
        bytes.append(0x8D)
        let mod = UInt8(rng.below(3)), rm = UInt8(rng.below(8))
        bytes.append(modrm(mod, d, rm))
        var base = rm == 5 && mod == 0 ? "" : Self.r32[Int(rm)]
        var indexText = ""
        if rm == 4 {
            let sib = UInt8(rng.below(256))
            bytes.append(sib)
            let idx = (sib >> 3) & 7, b = sib & 7
            base = (b == 5 && mod == 0) ? "" : Self.r32[Int(b)]
            if idx != 4 { indexText = "+\(Self.r32[Int(idx)])*\(1 << (sib >> 6))" }
            if b == 5 && mod == 0 { bytes += le32(imm32()) }
        } else if rm == 5 && mod == 0 {
            bytes += le32(imm32())
        }
        if mod == 1 { bytes.append(UInt8(rng.below(256))) }
        if mod == 2 { bytes += le32(imm32()) }
        emit(bytes, "lea \(regName(size, d)), [\(base)\(indexText)+disp]")
    }

    /// CBW, CWDE, CWD, CDQ.
    mutating func convert() {
        switch rng.below(4) {
        case 0: emit([0x66, 0x98], "cbw")
        case 1: emit([0x98], "cwde")
        case 2: emit([0x66, 0x99], "cwd")
        default: emit([0x99], "cdq")
        }
    }

    /// LAHF, SAHF, CLC, STC, CMC, CLD, STD.
    mutating func flagsOps() {
        switch rng.below(7) {
        case 0: emit([0x9F], "lahf", .lahf)
        case 1: emit([0x9E], "sahf", .sahf)
        case 2: emit([0xF8], "clc", .setCarry)
        case 3: emit([0xF9], "stc", .setCarry)
        case 4: emit([0xF5], "cmc", .cmc)
        case 5: emit([0xFC], "cld")
        default: emit([0xFD], "std")
        }
    }

    /// MOV in its register, immediate and memory forms.
    mutating func mov() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        switch rng.below(4) {
        case 0:
            let d = destReg(size), v = imm32()
            emit(p + [(size == 1 ? 0xB0 : 0xB8) + d] + immBytes(size, v), "mov \(regName(size, d)), \(hex(v, width: 1, prefix: "0x"))")
        case 1:
            let d = destReg(size)
            let (m, t) = memOperand(reg: d, width: size)
            emit(p + [0x8A | w] + m, "mov \(regName(size, d)), \(sizeName(size)) \(t)")
        case 2:
            let s = UInt8(rng.below(8))
            let (m, t) = memOperand(reg: s, width: size)
            emit(p + [0x88 | w] + m, "mov \(sizeName(size)) \(t), \(regName(size, s))")
        default:
            let v = imm32()
            let (m, t) = memOperand(reg: 0, width: size)
            emit(p + [0xC6 | w] + m + immBytes(size, v), "mov \(sizeName(size)) \(t), \(hex(v, width: 1, prefix: "0x"))")
        }
    }

    // MARK: stack

    /// PUSH imm32; POPFD: arithmetic flags and DF from a known value (never TF, IF, AC, NT).
    mutating func pushPopFlags() {
        let v = (UInt32(truncatingIfNeeded: rng.next()) & (F.all | 0x400)) | 2
        if rng.chance(20) {
            emit([0x66, 0x68] + le16(UInt16(v)), "push word \(hex(v, width: 4, prefix: "0x"))")
            emit([0x66, 0x9D], "popf", .popFlags)
        } else {
            emit([0x68] + le32(v), "push \(hex(v, prefix: "0x"))")
            emit([0x9D], "popfd", .popFlags)
        }
    }

    mutating func stack() {
        let room = Self.maxStack - stackDepth
        switch rng.below(10) {
        case 0...1 where room >= 4:
            let r = UInt8(rng.below(8))
            emit([0x50 + r], "push \(Self.r32[Int(r)])")
            stackDepth += 4
        case 2 where room >= 4:
            let (m, t) = memOperand(reg: 6, width: 4)
            emit([0xFF] + m, "push dword \(t)")
            stackDepth += 4
        case 3 where room >= 4:
            if rng.chance(50) {
                let b = UInt8(truncatingIfNeeded: imm32())
                emit([0x6A, b], "push \(hex(b, width: 2, prefix: "0x")) (sign-extended)")
            } else {
                let v = imm32()
                emit([0x68] + le32(v), "push \(hex(v, prefix: "0x"))")
            }
            stackDepth += 4
        case 4 where room >= 2:
            let r = UInt8(rng.below(8))
            emit([0x66, 0x50 + r], "push \(Self.r16[Int(r)])")
            stackDepth += 2
        case 5 where stackDepth >= 4:
            if rng.chance(70) {
                let r = writableReg()
                emit([0x58 + r], "pop \(Self.r32[Int(r)])")
            } else {
                let (m, t) = memOperand(reg: 0, width: 4)
                emit([0x8F] + m, "pop dword \(t)")
            }
            stackDepth -= 4
        case 6 where stackDepth >= 2:
            let r = writableReg()
            emit([0x66, 0x58 + r], "pop \(Self.r16[Int(r)])")
            stackDepth -= 2
        case 7:
            if rng.chance(50), room >= 4 {
                emit([0x9C], "pushfd", .pushFlags)
                stackDepth += 4
            } else {
                pushPopFlags()
            }
        case 8 where room >= 32:
            // PUSHAD (or PUSHA), something in between, POPAD (or POPA), then EBP reloaded.
            let wide = rng.chance(75)
            emit(wide ? [0x60] : [0x66, 0x60], wide ? "pushad" : "pusha")
            stackDepth += wide ? 32 : 16
            for _ in 0..<rng.below(3) { randomItem(topLevel: false) }
            emit(wide ? [0x61] : [0x66, 0x61], wide ? "popad" : "popa")
            stackDepth -= wide ? 32 : 16
            emit([0xBD] + le32(GeneratedProgram.dataPointer), "mov ebp, \(hex(GeneratedProgram.dataPointer, prefix: "0x"))")
        default:
            if stackDepth >= 4 {
                let r = writableReg()
                emit([0x58 + r], "pop \(Self.r32[Int(r)])")
                stackDepth -= 4
            } else {
                let r = UInt8(rng.below(8))
                emit([0x50 + r], "push \(Self.r32[Int(r)])")
                stackDepth += 4
            }
        }
    }

    // MARK: strings

    /// MOVS, STOS, LODS, CMPS, SCAS with REP/REPE/REPNE or none, after loading ESI, EDI (inside
    /// the string area) and ECX (0..16), in either direction.
    mutating func string() {
        let size = randomSize()
        let w: UInt8 = size == 1 ? 0 : 1
        let p = osPrefix(size)
        let esi = GeneratedProgram.stringArea + 0x100 + UInt32(rng.below(0x100))
        let edi = GeneratedProgram.stringArea + 0x500 + UInt32(rng.below(0x100))
        let count = UInt32(rng.below(17))
        emit([0xBE] + le32(esi), "mov esi, \(hex(esi, prefix: "0x"))")
        emit([0xBF] + le32(edi), "mov edi, \(hex(edi, prefix: "0x"))")
        emit([0xB9] + le32(count), "mov ecx, \(count)")
        if rng.chance(50) {
            if rng.chance(40) { emit([0xFD], "std") } else { emit([0xFC], "cld") }
        }
        let kind = rng.below(5)   // movs stos lods cmps scas
        let names = ["movs", "stos", "lods", "cmps", "scas"]
        let opcode: UInt8 = [0xA4, 0xAA, 0xAC, 0xA6, 0xAE][kind] | w
        let compares = kind >= 3
        var rep: [UInt8] = []
        var repText = ""
        switch rng.below(3) {
        case 0: break
        case 1: rep = [0xF3]; repText = compares ? "repe " : "rep "
        default:
            if compares { rep = [0xF2]; repText = "repne " } else { rep = [0xF3]; repText = "rep " }
        }
        let suffix = size == 1 ? "b" : size == 2 ? "w" : "d"
        // A repeated compare with ECX = 0 changes no flag.
        let fx: FlagEffect = compares && !(rep.count == 1 && count == 0) ? .arith : .none
        emit(rep + p + [opcode], "\(repText)\(names[kind])\(suffix)", fx)
    }

    // MARK: faults

    /// UD2, DIV by zero, loading a bad or not-present selector, BOUND out of range, INT3, INTO.
    mutating func fault() {
        switch rng.below(7) {
        case 0:
            emit([0x0F, 0x0B], "ud2", mayFault: true)
        case 1:
            let r = rng.pick([1, 3, 6, 7] as [UInt8])
            emit([0x31, modrm(3, r, r)], "xor \(Self.r32[Int(r)]), \(Self.r32[Int(r)])", .logic)
            emit([0xF7, modrm(3, rng.chance(50) ? 6 : 7, r)], "div/idiv \(Self.r32[Int(r)]) (divisor 0)", .divide, mayFault: true)
        case 2, 3:
            // A selector beyond the GDT's limit (#GP(selector)), or 10h, present in the GDT but
            // marked not present (#NP(10h)).
            let selector: UInt16 = rng.chance(25) ? 0x10 : UInt16(0x40 + rng.below(0x1FB8)) << 3
            let r = writableReg()
            let sreg = rng.pick([0, 3, 4, 5] as [UInt8])
            let names = ["es", "cs", "ss", "ds", "fs", "gs"]
            emit([0x66, 0xB8 + r] + le16(selector), "mov \(Self.r16[Int(r)]), \(hex(selector, width: 4, prefix: "0x"))")
            emit([0x8E, modrm(3, sreg, r)], "mov \(names[Int(sreg)]), \(Self.r16[Int(r)])", mayFault: true)
        case 4:
            let r = UInt8(rng.below(8))
            let (m, t) = memOperand(reg: r, width: 8)
            emit([0x62] + m, "bound \(Self.r32[Int(r)]), qword \(t)", mayFault: true)
        case 5:
            emit([0xCC], "int3", mayFault: true)
        default:
            emit([0xCE], "into", FlagEffect(reads: F.of), mayFault: true)
        }
    }

    // MARK: more

    /// BSWAP, XLAT, MOV with moffs, CALL/POP, BCD adjusts, SAL (/6), CMPXCHG8B, multi-byte NOP,
    /// 16-bit SHLD/SHRD by CL, PUSH imm16/POP m16.
    mutating func misc() {
        switch rng.below(10) {
        case 0:
            let r = writableReg()
            emit([0x0F, 0xC8 + r], "bswap \(Self.r32[Int(r)])")
        case 1:
            emit([0xBB] + le32(GeneratedProgram.dataBase), "mov ebx, \(hex(GeneratedProgram.dataBase, prefix: "0x"))")
            emit([0xD7], "xlatb")
        case 2:
            let size = randomSize()
            let w: UInt8 = size == 1 ? 0 : 1
            let address = GeneratedProgram.dataBase + UInt32(rng.below(0xF0))
            if rng.chance(50) {
                emit(osPrefix(size) + [0xA0 | w] + le32(address), "mov \(regName(size, 0)), \(sizeName(size)) [\(hex(address, prefix: "0x"))]")
            } else {
                emit(osPrefix(size) + [0xA2 | w] + le32(address), "mov \(sizeName(size)) [\(hex(address, prefix: "0x"))], \(regName(size, 0))")
            }
        case 3:
            let r = writableReg()
            emit([0xE8, 0, 0, 0, 0], "call next")
            emit([0x58 + r], "pop \(Self.r32[Int(r)])")
        case 4:
            // SDM "DAA"/"DAS": CF, AF, SF, ZF, PF defined, OF undefined; "AAA"/"AAS": AF, CF
            // defined, OF, SF, ZF, PF undefined; "AAM"/"AAD": SF, ZF, PF defined, OF, AF, CF
            // undefined (AAM 0: #DE). SF, ZF, PF of AAM/AAD are not compared: see
            // `FlagEffect.asciiAdjustHostDeviation`.
            switch rng.below(6) {
            case 0: emit([0x27], "daa", FlagEffect(reads: F.cf | F.af, defines: F.cf | F.af | F.sf | F.zf | F.pf, undefines: F.of))
            case 1: emit([0x2F], "das", FlagEffect(reads: F.cf | F.af, defines: F.cf | F.af | F.sf | F.zf | F.pf, undefines: F.of))
            case 2: emit([0x37], "aaa", FlagEffect(reads: F.af, defines: F.af | F.cf, undefines: F.of | F.sf | F.zf | F.pf))
            case 3: emit([0x3F], "aas", FlagEffect(reads: F.af, defines: F.af | F.cf, undefines: F.of | F.sf | F.zf | F.pf))
            case 4:
                let b = rng.chance(15) ? 0 : UInt8(1 + rng.below(255))
                emit([0xD4, b], "aam \(b)", FlagEffect.asciiAdjustHostDeviation, mayFault: b == 0)
            default:
                let b = UInt8(rng.below(256))
                emit([0xD5, b], "aad \(b)", FlagEffect.asciiAdjustHostDeviation)
            }
        case 5:
            // Group 2 /6: an alias of SHL on every x86 CPU (not in the SDM's opcode table).
            let size = randomSize()
            let w: UInt8 = size == 1 ? 0 : 1
            let r = destReg(size)
            let count = 1 + rng.below(8)
            emit(osPrefix(size) + [0xC0 | w, modrm(3, 6, r), UInt8(count)], "sal(/6) \(regName(size, r)), \(count)",
                 .shift(4, bits: size * 8, count: count))
        case 6:
            // SDM "CMPXCHG8B": ZF set if equal; CF, PF, AF, SF, OF unaffected.
            let (m, t) = memOperand(reg: 1, width: 8)
            lock(true)
            emit([0x0F, 0xC7] + m, "cmpxchg8b qword \(t)", FlagEffect(defines: F.zf))
        case 7:
            let (m, t) = memOperand(reg: 0, width: 4)
            emit(osPrefix(randomWideSize()) + [0x0F, 0x1F] + m, "nop \(t)")
        case 8:
            let count = UInt8(rng.below(17))
            emit([0xB1, count], "mov cl, \(count)")
            let left = rng.chance(50)
            let src = UInt8(rng.below(8)), dst = writableReg()
            emit([0x66, 0x0F, left ? 0xA5 : 0xAD, modrm(3, src, dst)],
                 "\(left ? "shld" : "shrd") \(Self.r16[Int(dst)]), \(Self.r16[Int(src)]), cl", .doubleShift(count: Int(count)))
        default:
            let v = UInt16(truncatingIfNeeded: imm32())
            emit([0x66, 0x68] + le16(v), "push word \(hex(v, width: 4, prefix: "0x"))")
            let (m, t) = memOperand(reg: 0, width: 2)
            emit([0x66, 0x8F] + m, "pop word \(t)")
        }
    }
}
