/// The pure x86 decoder of the interpreter: bytes in, `DecodedInstruction` out. It reads no machine
/// state beyond the one bit it is given (the code segment's default size), so it can be tested on
/// byte strings alone (Intel SDM vol. 2, chapter 2, "Instruction format").

/// Segment register numbers as the x86 encodes them (ModRM.reg of MOV Sreg, SDM vol. 2 table 3-?).
public enum SegmentIndex {
    public static let es: UInt8 = 0
    public static let cs: UInt8 = 1
    public static let ss: UInt8 = 2
    public static let ds: UInt8 = 3
    public static let fs: UInt8 = 4
    public static let gs: UInt8 = 5
}

/// One decoded instruction. Register numbers follow the x86 encoding (0 = EAX ... 7 = EDI).
public struct DecodedInstruction: Equatable, Sendable {
    /// The opcode: 00h–FFh for one-byte opcodes, 100h + xx for two-byte opcodes `0F xx`.
    public var opcode: UInt16 = 0
    /// Total length in bytes, prefixes included (1...15).
    public var length: UInt8 = 0
    /// Operand size in bytes from CS.D and the 66h prefix: 2 or 4.
    public var operandSize: UInt8 = 4
    /// Size of the primary operand: 1 for byte forms, otherwise `operandSize`.
    public var size: UInt8 = 4
    /// Address size: true for 32-bit addressing (CS.D xor 67h).
    public var address32: Bool = true
    /// Segment of the memory operand: the override if there is one, otherwise the default
    /// (SS for EBP/ESP-based forms, DS otherwise). String destinations always use ES.
    public var segment: UInt8 = SegmentIndex.ds
    /// Whether a segment override prefix was present.
    public var segmentOverride: Bool = false
    /// Repeat prefix: 0 none, 1 = F3 (REP/REPE), 2 = F2 (REPNE).
    public var rep: UInt8 = 0
    /// LOCK prefix (the decoder already rejected it where it is not allowed).
    public var lock: Bool = false
    /// Whether the instruction has a ModRM byte.
    public var hasModRM: Bool = false
    /// ModRM fields.
    public var mod: UInt8 = 0
    public var reg: UInt8 = 0
    public var rm: UInt8 = 0
    /// Whether there is a memory operand (ModRM with mod != 3, or a moffs form).
    public var isMemory: Bool = false
    /// Effective address: base register or `noRegister`, index register or `noRegister`,
    /// scale as a shift count (0...3), displacement (sign-extended to 32 bits).
    public var base: UInt8 = DecodedInstruction.noRegister
    public var index: UInt8 = DecodedInstruction.noRegister
    public var scale: UInt8 = 0
    public var displacement: UInt32 = 0
    /// First immediate (sign- or zero-extended as the instruction defines, see the executor).
    public var immediate: UInt32 = 0
    /// Second immediate: the selector of a far pointer (9A/EA), the level of ENTER.
    public var immediate2: UInt32 = 0

    /// Marks "no base/index register".
    public static let noRegister: UInt8 = 0xFF

    public init() {}
}

/// Why bytes do not form an instruction.
public enum DecodeFailure: Error, Equatable, Sendable {
    /// Undefined or unsupported opcode, or a LOCK prefix where it is not allowed: #UD.
    case invalidOpcode
    /// More than 15 bytes: #GP(0).
    case tooLong
    /// The bytes end before the instruction does; `needed` bytes would be required at least.
    case truncated(needed: Int)
}

/// The decoder. Stateless; all functions are pure.
public enum X86Decoder {
    /// Immediate kinds.
    enum Imm: UInt8 { case none, ib, iw, iz, farPtr, enter, moffs, group3 }

    /// Decodes one instruction from `bytes` for a code segment whose default size is 32-bit
    /// (`defaultSize32`) or 16-bit.
    public static func decode(_ bytes: [UInt8], defaultSize32: Bool = true) -> Result<DecodedInstruction, DecodeFailure> {
        bytes.withUnsafeBytes { decode($0, defaultSize32: defaultSize32) }
    }

    /// Decodes one instruction from a raw buffer.
    public static func decode(_ p: UnsafeRawBufferPointer, defaultSize32: Bool) -> Result<DecodedInstruction, DecodeFailure> {
        var d = DecodedInstruction()
        var pos = 0
        let count = min(p.count, 15)
        var opsize32 = defaultSize32
        var addr32 = defaultSize32
        var seg: UInt8 = 0xFF
        // Prefixes.
        while true {
            guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
            let b = p[pos]
            switch b {
            case 0x66: opsize32 = !defaultSize32
            case 0x67: addr32 = !defaultSize32
            case 0x26: seg = SegmentIndex.es
            case 0x2E: seg = SegmentIndex.cs
            case 0x36: seg = SegmentIndex.ss
            case 0x3E: seg = SegmentIndex.ds
            case 0x64: seg = SegmentIndex.fs
            case 0x65: seg = SegmentIndex.gs
            case 0xF0: d.lock = true
            case 0xF2: d.rep = 2
            case 0xF3: d.rep = 1
            default:
                break
            }
            if b == 0x66 || b == 0x67 || b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x64
                || b == 0x65 || b == 0xF0 || b == 0xF2 || b == 0xF3 {
                pos += 1
                continue
            }
            break
        }
        d.operandSize = opsize32 ? 4 : 2
        d.address32 = addr32
        var op = UInt16(p[pos])
        pos += 1
        if op == 0x0F {
            guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
            op = 0x100 | UInt16(p[pos])
            pos += 1
        }
        d.opcode = op
        guard let info = opcodeInfo(op) else { return .failure(.invalidOpcode) }
        d.size = info.byteOp ? 1 : d.operandSize
        var imm = info.imm
        if info.modrm {
            guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
            let m = p[pos]
            pos += 1
            d.hasModRM = true
            d.mod = m >> 6
            d.reg = (m >> 3) & 7
            d.rm = m & 7
            // Group-specific validity.
            guard modrmValid(op, d.mod, d.reg) else { return .failure(.invalidOpcode) }
            // MOV to/from CRn/DRn ignore mod: the operand is always a register (SDM vol. 2, MOV CR).
            if op >= 0x120 && op <= 0x123 { d.mod = 3 }
            if d.mod != 3 {
                d.isMemory = true
                if addr32 {
                    var baseDefault = true
                    if d.rm == 4 {
                        guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
                        let sib = p[pos]
                        pos += 1
                        d.scale = sib >> 6
                        let idx = (sib >> 3) & 7
                        d.index = idx == 4 ? DecodedInstruction.noRegister : idx
                        let b = sib & 7
                        if b == 5 && d.mod == 0 {
                            d.base = DecodedInstruction.noRegister
                            baseDefault = false
                            guard pos + 4 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 4)) }
                            d.displacement = read32(p, pos)
                            pos += 4
                        } else {
                            d.base = b
                        }
                    } else if d.rm == 5 && d.mod == 0 {
                        d.base = DecodedInstruction.noRegister
                        baseDefault = false
                        guard pos + 4 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 4)) }
                        d.displacement = read32(p, pos)
                        pos += 4
                    } else {
                        d.base = d.rm
                    }
                    if d.mod == 1 {
                        guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
                        d.displacement = UInt32(bitPattern: Int32(Int8(bitPattern: p[pos])))
                        pos += 1
                    } else if d.mod == 2 {
                        guard pos + 4 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 4)) }
                        d.displacement = read32(p, pos)
                        pos += 4
                    }
                    d.segment = (baseDefault && (d.base == 4 || d.base == 5)) ? SegmentIndex.ss : SegmentIndex.ds
                } else {
                    // 16-bit forms (SDM vol. 2 table 2-1).
                    switch d.rm {
                    case 0: d.base = 3; d.index = 6
                    case 1: d.base = 3; d.index = 7
                    case 2: d.base = 5; d.index = 6
                    case 3: d.base = 5; d.index = 7
                    case 4: d.base = 6
                    case 5: d.base = 7
                    case 6: d.base = d.mod == 0 ? DecodedInstruction.noRegister : 5
                    default: d.base = 3
                    }
                    if d.mod == 0 && d.rm == 6 {
                        guard pos + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 2)) }
                        d.displacement = UInt32(read16(p, pos))
                        pos += 2
                    } else if d.mod == 1 {
                        guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
                        d.displacement = UInt32(UInt16(bitPattern: Int16(Int8(bitPattern: p[pos]))))
                        pos += 1
                    } else if d.mod == 2 {
                        guard pos + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 2)) }
                        d.displacement = UInt32(read16(p, pos))
                        pos += 2
                    }
                    d.segment = (d.base == 5) ? SegmentIndex.ss : SegmentIndex.ds
                }
            }
            if imm == .group3 { imm = d.reg < 2 ? (info.byteOp ? .ib : .iz) : .none }
        }
        // LOCK validity (SDM vol. 2, LOCK): only read-modify-write forms with a memory destination.
        if d.lock && !(d.isMemory && lockAllowed(op, d.reg)) { return .failure(.invalidOpcode) }
        switch imm {
        case .none, .group3: break
        case .ib:
            guard pos < count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 1)) }
            d.immediate = UInt32(p[pos]); pos += 1
        case .iw:
            guard pos + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 2)) }
            d.immediate = UInt32(read16(p, pos)); pos += 2
        case .iz:
            if opsize32 {
                guard pos + 4 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 4)) }
                d.immediate = read32(p, pos); pos += 4
            } else {
                guard pos + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 2)) }
                d.immediate = UInt32(read16(p, pos)); pos += 2
            }
        case .farPtr:
            let n = opsize32 ? 4 : 2
            guard pos + n + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + n + 2)) }
            d.immediate = opsize32 ? read32(p, pos) : UInt32(read16(p, pos))
            d.immediate2 = UInt32(read16(p, pos + n))
            pos += n + 2
        case .enter:
            guard pos + 3 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 3)) }
            d.immediate = UInt32(read16(p, pos))
            d.immediate2 = UInt32(p[pos + 2])
            pos += 3
        case .moffs:
            d.isMemory = true
            d.segment = SegmentIndex.ds
            if addr32 {
                guard pos + 4 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 4)) }
                d.displacement = read32(p, pos); pos += 4
            } else {
                guard pos + 2 <= count else { return .failure(p.count >= 15 ? .tooLong : .truncated(needed: pos + 2)) }
                d.displacement = UInt32(read16(p, pos)); pos += 2
            }
        }
        if seg != 0xFF {
            d.segment = seg
            d.segmentOverride = true
        }
        d.length = UInt8(pos)
        return .success(d)
    }

    @inline(__always) static func read16(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt16 {
        UInt16(p[i]) | UInt16(p[i + 1]) << 8
    }

    @inline(__always) static func read32(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(p[i]) | UInt32(p[i + 1]) << 8 | UInt32(p[i + 2]) << 16 | UInt32(p[i + 3]) << 24
    }

    struct Info {
        var modrm: Bool
        var imm: Imm
        var byteOp: Bool
    }

    /// Opcode attributes, or nil for opcodes the interpreter treats as undefined (#UD).
    static func opcodeInfo(_ op: UInt16) -> Info? {
        if op < 0x100 { return oneByteInfo(UInt8(op)) }
        return twoByteInfo(UInt8(truncatingIfNeeded: op))
    }

    static func oneByteInfo(_ o: UInt8) -> Info? {
        switch o {
        case 0x00...0x3F:
            let low = o & 7
            switch low {
            case 0, 2: return Info(modrm: true, imm: .none, byteOp: true)
            case 1, 3: return Info(modrm: true, imm: .none, byteOp: false)
            case 4: return Info(modrm: false, imm: .ib, byteOp: true)
            case 5: return Info(modrm: false, imm: .iz, byteOp: false)
            default:
                // 06/07/0E/16/17/1E/1F push/pop seg; 27/2F/37/3F BCD; 26/2E/36/3E are prefixes; 0F handled.
                if o == 0x0F { return nil }
                return Info(modrm: false, imm: .none, byteOp: false)
            }
        case 0x40...0x61: return Info(modrm: false, imm: .none, byteOp: false)
        case 0x62, 0x63: return Info(modrm: true, imm: .none, byteOp: false)
        case 0x68: return Info(modrm: false, imm: .iz, byteOp: false)
        case 0x69: return Info(modrm: true, imm: .iz, byteOp: false)
        case 0x6A: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0x6B: return Info(modrm: true, imm: .ib, byteOp: false)
        case 0x6C, 0x6E: return Info(modrm: false, imm: .none, byteOp: true)
        case 0x6D, 0x6F: return Info(modrm: false, imm: .none, byteOp: false)
        case 0x70...0x7F: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0x80, 0x82: return Info(modrm: true, imm: .ib, byteOp: true)
        case 0x81: return Info(modrm: true, imm: .iz, byteOp: false)
        case 0x83: return Info(modrm: true, imm: .ib, byteOp: false)
        case 0x84, 0x86, 0x88, 0x8A: return Info(modrm: true, imm: .none, byteOp: true)
        case 0x85, 0x87, 0x89, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F: return Info(modrm: true, imm: .none, byteOp: false)
        case 0x90...0x99, 0x9B...0x9F: return Info(modrm: false, imm: .none, byteOp: false)
        case 0x9A: return Info(modrm: false, imm: .farPtr, byteOp: false)
        case 0xA0, 0xA2: return Info(modrm: false, imm: .moffs, byteOp: true)
        case 0xA1, 0xA3: return Info(modrm: false, imm: .moffs, byteOp: false)
        case 0xA4, 0xA6, 0xAA, 0xAC, 0xAE: return Info(modrm: false, imm: .none, byteOp: true)
        case 0xA5, 0xA7, 0xAB, 0xAD, 0xAF: return Info(modrm: false, imm: .none, byteOp: false)
        case 0xA8: return Info(modrm: false, imm: .ib, byteOp: true)
        case 0xA9: return Info(modrm: false, imm: .iz, byteOp: false)
        case 0xB0...0xB7: return Info(modrm: false, imm: .ib, byteOp: true)
        case 0xB8...0xBF: return Info(modrm: false, imm: .iz, byteOp: false)
        case 0xC0: return Info(modrm: true, imm: .ib, byteOp: true)
        case 0xC1: return Info(modrm: true, imm: .ib, byteOp: false)
        case 0xC2, 0xCA: return Info(modrm: false, imm: .iw, byteOp: false)
        case 0xC3, 0xCB, 0xCC, 0xCE, 0xCF, 0xC9: return Info(modrm: false, imm: .none, byteOp: false)
        case 0xC4, 0xC5: return Info(modrm: true, imm: .none, byteOp: false)
        case 0xC6: return Info(modrm: true, imm: .ib, byteOp: true)
        case 0xC7: return Info(modrm: true, imm: .iz, byteOp: false)
        case 0xC8: return Info(modrm: false, imm: .enter, byteOp: false)
        case 0xCD: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0xD0, 0xD2: return Info(modrm: true, imm: .none, byteOp: true)
        case 0xD1, 0xD3: return Info(modrm: true, imm: .none, byteOp: false)
        case 0xD4, 0xD5: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0xD7: return Info(modrm: false, imm: .none, byteOp: true)
        case 0xD8...0xDF: return Info(modrm: true, imm: .none, byteOp: false)
        case 0xE0...0xE3, 0xEB: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0xE4, 0xE6: return Info(modrm: false, imm: .ib, byteOp: true)
        case 0xE5, 0xE7: return Info(modrm: false, imm: .ib, byteOp: false)
        case 0xE8, 0xE9: return Info(modrm: false, imm: .iz, byteOp: false)
        case 0xEA: return Info(modrm: false, imm: .farPtr, byteOp: false)
        case 0xEC, 0xEE: return Info(modrm: false, imm: .none, byteOp: true)
        case 0xED, 0xEF: return Info(modrm: false, imm: .none, byteOp: false)
        case 0xF1, 0xF4, 0xF5, 0xF8...0xFD: return Info(modrm: false, imm: .none, byteOp: false)
        case 0xF6: return Info(modrm: true, imm: .group3, byteOp: true)
        case 0xF7: return Info(modrm: true, imm: .group3, byteOp: false)
        case 0xFE: return Info(modrm: true, imm: .none, byteOp: true)
        case 0xFF: return Info(modrm: true, imm: .none, byteOp: false)
        default: return nil  // 0x64-0x67 (prefixes), 0xD6 (SALC) ...
        }
    }

    static func twoByteInfo(_ o: UInt8) -> Info? {
        switch o {
        case 0x00, 0x01, 0x02, 0x03: return Info(modrm: true, imm: .none, byteOp: false)
        case 0x06, 0x08, 0x09, 0x0B, 0x31, 0xA2: return Info(modrm: false, imm: .none, byteOp: false)
        case 0x18...0x1F: return Info(modrm: true, imm: .none, byteOp: false)  // hint NOPs
        case 0x20...0x23: return Info(modrm: true, imm: .none, byteOp: false)
        case 0x40...0x4F: return Info(modrm: true, imm: .none, byteOp: false)
        case 0x80...0x8F: return Info(modrm: false, imm: .iz, byteOp: false)
        case 0x90...0x9F: return Info(modrm: true, imm: .none, byteOp: true)
        case 0xA0, 0xA1, 0xA8, 0xA9: return Info(modrm: false, imm: .none, byteOp: false)
        case 0xA3, 0xA5, 0xAB, 0xAD, 0xAF, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xBB, 0xBC, 0xBD, 0xC1, 0xC7:
            return Info(modrm: true, imm: .none, byteOp: false)
        case 0xA4, 0xAC, 0xBA: return Info(modrm: true, imm: .ib, byteOp: false)
        case 0xB0, 0xC0: return Info(modrm: true, imm: .none, byteOp: true)
        case 0xB6, 0xB7, 0xBE, 0xBF: return Info(modrm: true, imm: .none, byteOp: false)
        case 0xC8...0xCF: return Info(modrm: false, imm: .none, byteOp: false)
        // MMX/SSE opcode space: decoded without operands so the executor can raise #NM or #UD.
        case 0x10...0x17, 0x28...0x2F, 0x50...0x7F, 0xC2...0xC6, 0xD0...0xFF:
            return Info(modrm: false, imm: .none, byteOp: false)
        default: return nil
        }
    }

    /// ModRM-dependent validity (groups, register-only/memory-only forms).
    static func modrmValid(_ op: UInt16, _ mod: UInt8, _ reg: UInt8) -> Bool {
        switch op {
        case 0x62, 0x8D, 0xC4, 0xC5: return mod != 3
        case 0x8C: return reg <= 5
        case 0x8E: return reg <= 5 && reg != 1
        case 0x8F, 0xC6, 0xC7: return reg == 0
        case 0xFE: return reg <= 1
        case 0xFF: return reg != 7 && !(mod == 3 && (reg == 3 || reg == 5))
        case 0x100: return reg <= 5
        case 0x101:
            if reg == 5 { return false }
            if reg <= 3 || reg == 7 { return mod != 3 }
            return true
        case 0x120, 0x122: return reg != 1 && reg != 5 && reg != 6 && reg != 7
        case 0x1B2, 0x1B4, 0x1B5: return mod != 3
        case 0x1BA: return reg >= 4
        case 0x1C7: return reg == 1 && mod != 3
        default: return true
        }
    }

    static func lockAllowed(_ op: UInt16, _ reg: UInt8) -> Bool {
        switch op {
        case 0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31: return true
        case 0x80, 0x81, 0x82, 0x83: return reg != 7
        case 0x86, 0x87: return true
        case 0xF6, 0xF7: return reg == 2 || reg == 3
        case 0xFE, 0xFF: return reg <= 1
        case 0x1AB, 0x1B3, 0x1BB, 0x1B0, 0x1B1, 0x1C0, 0x1C1, 0x1C7: return true
        case 0x1BA: return reg >= 5
        default: return false
        }
    }
}
