import VMMHarness

/// One interpreter fuzz case: a start state chosen by the input's first bytes, and the rest of
/// the input as code at `MemoryMap.imageBase`, over fresh guest memory holding the runtime's GDT,
/// IDT, TSS and stubs. Any stop is a valid outcome; only a host crash or hang is a finding.
///
/// Input layout (short inputs read as zero-padded):
///
/// | bytes | meaning |
/// |---|---|
/// | 0 | mode: bits 0–1 ring 0 / ring 3 / V86 / ring 3 with fuzzed IOPL kept; bit 2 paging; bit 3 a 4 MiB PSE page instead of a page table; bit 4 page attributes from byte 46; bit 5 ESP from the input; bit 6 an external interrupt at mid-budget |
/// | 1 | CR0.MP, EM, TS, NE, WP, AM (bits 0–5); CR4.PSE (bit 6) |
/// | 2–5 | EFLAGS (VM and RF masked off; VM set for V86) |
/// | 6–37 | EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI |
/// | 38–45 | V86 DS, ES, FS, GS selectors |
/// | 46 | page attributes: bits 0–3 make pages 100000h–103FFFh read-only, bits 4–7 supervisor-only |
/// | 47 | external interrupt vector |
/// | 48– | code (at most `codeLimit` bytes) |
public enum InterpreterCase {
    /// Guest memory per case: room for the runtime, the stacks, page tables at A0000h and the code.
    public static let memorySize = 2 << 20
    /// Largest code part used.
    public static let codeLimit = 4096
    /// Instructions per case (faults and stops count too).
    public static let instructionBudget = 4096
    /// Host exits handled per case before it is cut off.
    public static let stopLimit = 64
    static let pageDirectory: UInt32 = 0x000A_0000
    static let pageTable: UInt32 = 0x000A_1000
    static let layout = try! RuntimeImage.layout()

    /// What one case did, for replays and tests.
    public struct Outcome: Sendable {
        /// Every stop the interpreter reported, in order.
        public var stops: [InterpreterStop] = []
        /// Instructions retired.
        public var instructions: UInt64 = 0
    }

    /// Runs one case. Never throws: any outcome the guest can reach is fine.
    @discardableResult
    public static func run(_ input: [UInt8]) -> Outcome {
        var b = FuzzBytes(input)
        let mode = b.u8()
        let control = b.u8()
        let eflagsIn = b.u32()
        var gpr = [UInt32](repeating: 0, count: 8)
        for i in 0..<8 { gpr[i] = b.u32() }
        let v86Segments = [b.u16(), b.u16(), b.u16(), b.u16()]
        let pageBits = b.u8()
        let irqVector = b.u8()
        let code = b.rest(limit: codeLimit)

        // The decoder on its own, over the raw code bytes, in both operand sizes.
        decodeAll(code)

        guard let memory = try? GuestMemory(size: memorySize) else { return Outcome() }
        do {
            try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
            try memory.writeBytes(MemoryMap.imageBase, code)
        } catch { return Outcome() }

        var s = Machine.initialState(entry: MemoryMap.imageBase, layout: layout)
        s.eax = gpr[0]; s.ecx = gpr[1]; s.edx = gpr[2]; s.ebx = gpr[3]
        s.ebp = gpr[5]; s.esi = gpr[6]; s.edi = gpr[7]
        let cr0Bits: [(UInt8, UInt32)] = [(0x01, CR0.mp), (0x02, CR0.em), (0x04, CR0.ts), (0x08, CR0.ne),
                                          (0x10, CR0.wp), (0x20, CR0.am)]
        for (bit, flag) in cr0Bits where control & bit != 0 { s.cr0 |= flag }
        if control & 0x40 != 0 { s.cr4 |= 0x10 }
        s.eflags = (eflagsIn & 0x0024_7FD5) | EFlags.reserved1

        switch mode & 3 {
        case 0:
            s.esp = MemoryMap.ring0StackTop
        case 1, 3:
            s.cs = .flatCode(selector: Selectors.ring3Code, dpl: 3)
            let d = SegmentRegister.flatData(selector: Selectors.ring3Data, dpl: 3)
            s.ss = d; s.ds = d; s.es = d; s.fs = d; s.gs = d
            s.esp = MemoryMap.ring3StackTop
            if mode & 3 == 1 { s.eflags &= ~EFlags.iopl }
        default:
            // V86: FFFF:0010 is linear 10_0000h (no A20 wrap), the stack in the ring-3 stack area.
            s.eflags |= EFlags.vm
            s.cs = SegmentRegister(selector: 0xFFFF)
            s.ss = SegmentRegister(selector: 0x8000)
            s.ds = SegmentRegister(selector: v86Segments[0]); s.es = SegmentRegister(selector: v86Segments[1])
            s.fs = SegmentRegister(selector: v86Segments[2]); s.gs = SegmentRegister(selector: v86Segments[3])
            s.eip = 0x10
            s.esp = 0xFFF0
        }
        if mode & 0x20 != 0 { s.esp = gpr[4] }

        if mode & 4 != 0 {
            do { try buildPageTables(memory, pse: mode & 8 != 0 && s.cr4 & 0x10 != 0,
                                     attributes: mode & 0x10 != 0 ? pageBits : 0) } catch { return Outcome() }
            s.cr3 = pageDirectory
            s.cr0 |= CR0.pg
        }

        let cpu = Interpreter(memory: memory, state: s)
        var outcome = Outcome()
        var remaining = instructionBudget
        var interruptAt = mode & 0x40 != 0 ? instructionBudget / 2 : 0
        while remaining > 0, outcome.stops.count < stopLimit {
            let slice = interruptAt > 0 ? min(remaining, interruptAt) : remaining
            let before = cpu.instructionsExecuted
            let stop = cpu.run(budget: slice)
            let retired = Int(truncatingIfNeeded: cpu.instructionsExecuted &- before)
            remaining -= stop == .budgetExhausted ? slice : min(remaining, retired + 1)
            if interruptAt > 0 { interruptAt = max(0, interruptAt - slice) }
            outcome.stops.append(stop)
            switch stop {
            case .budgetExhausted:
                if interruptAt == 0, mode & 0x40 != 0, cpu.state.eflags & EFlags.if != 0, !cpu.interruptsInhibited {
                    if let st = cpu.deliverExternalInterrupt(vector: irqVector) { outcome.stops.append(st) }
                }
            case .portIn:
                cpu.completePortIn(value: 0xFFFF_FFFF ^ UInt32(irqVector))
            case .portOut:
                // What the Machine does on every exit: read the state and write it back.
                cpu.state = cpu.state
            case .halt, .shutdown, .mmio:
                remaining = 0
            }
        }
        outcome.instructions = cpu.instructionsExecuted
        return outcome
    }

    /// Decodes `code` instruction by instruction as 32-bit and as 16-bit code.
    static func decodeAll(_ code: [UInt8]) {
        code.withUnsafeBytes { raw in
            for big in [true, false] {
                var offset = 0
                while offset < raw.count {
                    let window = UnsafeRawBufferPointer(rebasing: raw[offset..<min(raw.count, offset + 15)])
                    switch X86Decoder.decode(window, defaultSize32: big) {
                    case let .success(ins): offset += max(1, Int(ins.length))
                    case .failure: offset += 1
                    }
                }
            }
        }
    }

    /// Identity-maps the first 4 MiB (the part past the end of memory reads as MMIO).
    static func buildPageTables(_ memory: GuestMemory, pse: Bool, attributes: UInt8) throws(MemoryAccessError) {
        if pse {
            try memory.write32(pageDirectory, 0x87)
            return
        }
        try memory.write32(pageDirectory, pageTable | 7)
        for i in UInt32(0)..<1024 {
            var pte = i << 12 | 7
            if i >= 0x100 && i < 0x104 {
                let k = i - 0x100
                if attributes >> k & 1 != 0 { pte &= ~2 }
                if attributes >> (k + 4) & 1 != 0 { pte &= ~4 }
            }
            try memory.write32(pageTable + i * 4, pte)
        }
    }
}
