@testable import VMMHarness

/// A small protected-mode test machine with the runtime's GDT layout:
/// 08h TSS (no I/O bitmap), 10h not-present data, 1Bh ring-3 code, 23h ring-3 data, 28h ring-0 code, 30h ring-0 data.
/// Every IDT vector v < 50h is an interrupt gate (DPL 3 for 30h and 3, DPL 0 otherwise) to a stub
/// `out (80h + v), al` so a delivered exception stops with `.portOut(port: 80h + v)`.
struct TestMachine {
    static let gdt: UInt32 = 0x1000
    static let tss: UInt32 = 0x1800
    static let idt: UInt32 = 0x2000
    static let stubs: UInt32 = 0x3000
    static let code: UInt32 = 0x10000
    static let ring0Stack: UInt32 = 0x80000
    static let ring0FaultStack: UInt32 = 0x20000
    static let ring3Stack: UInt32 = 0x88000

    let memory: GuestMemory
    let cpu: Interpreter

    init(code bytes: [UInt8], ring3: Bool = false, memorySize: Int = 4 << 20, configure: (inout CPUState) -> Void = { _ in }) throws {
        let memory = try GuestMemory(size: memorySize)
        func seg(_ type: UInt8, dpl: UInt8, present: Bool = true) -> UInt64 {
            SegmentDescriptor(base: 0, limit: 0xFFFFF, type: type, isCodeOrData: true, dpl: dpl, present: present,
                              defaultBig: true, granularity: true).raw
        }
        try memory.write64(TestMachine.gdt + 0x08, SegmentDescriptor(base: TestMachine.tss, limit: 0x67, type: 9, isCodeOrData: false, dpl: 0, present: true, defaultBig: false, granularity: false).raw)
        try memory.write64(TestMachine.gdt + 0x10, seg(0x3, dpl: 0, present: false))
        try memory.write64(TestMachine.gdt + 0x18, seg(0xB, dpl: 3))
        try memory.write64(TestMachine.gdt + 0x20, seg(0x3, dpl: 3))
        try memory.write64(TestMachine.gdt + 0x28, seg(0xB, dpl: 0))
        try memory.write64(TestMachine.gdt + 0x30, seg(0x3, dpl: 0))
        try memory.write32(TestMachine.tss + 4, TestMachine.ring0FaultStack)
        try memory.write32(TestMachine.tss + 8, 0x30)
        // I/O map base = limit + 1: no I/O permission bitmap, as in the runtime's TSS.
        try memory.write16(TestMachine.tss + 0x66, 0x68)
        for v in UInt32(0)..<0x50 {
            let stub = TestMachine.stubs + v * 16
            try memory.writeBytes(stub, [0xE6, UInt8(0x80 + v), 0xF4])
            let dpl: UInt8 = (v == 3 || v == 4 || v == 0x30) ? 3 : 0
            try memory.write64(TestMachine.idt + v * 8, GateDescriptor(offset: stub, selector: 0x28, kind: .interrupt32, dpl: dpl).raw)
        }
        try memory.writeBytes(TestMachine.code, bytes)
        var s = CPUState()
        s.cr0 = CR0.pe | CR0.et
        s.gdtr = TableRegister(base: TestMachine.gdt, limit: 0x37)
        s.idtr = TableRegister(base: TestMachine.idt, limit: 0x50 * 8 - 1)
        s.tr = SegmentDescriptor(base: TestMachine.tss, limit: 0x67, type: 0xB, isCodeOrData: false, dpl: 0, present: true, defaultBig: false, granularity: false).segmentRegister(selector: 0x08)
        s.ldtr = SegmentRegister(unusable: true)
        if ring3 {
            s.cs = .flatCode(selector: 0x1B, dpl: 3)
            s.ss = .flatData(selector: 0x23, dpl: 3)
            s.esp = TestMachine.ring3Stack
        } else {
            s.cs = .flatCode(selector: 0x28, dpl: 0)
            s.ss = .flatData(selector: 0x30, dpl: 0)
            s.esp = TestMachine.ring0Stack
        }
        s.ds = s.ss; s.es = s.ss; s.fs = s.ss; s.gs = s.ss
        s.eip = TestMachine.code
        s.eflags = 0x2
        configure(&s)
        self.memory = memory
        self.cpu = Interpreter(memory: memory, state: s)
    }

    /// Runs until a stop (budget 10,000).
    func run(_ budget: Int = 10_000) -> InterpreterStop { cpu.run(budget: budget) }

    /// The dword at ESP + 4 * i.
    func stack(_ i: UInt32) -> UInt32 {
        (try? memory.read32(cpu.state.esp &+ 4 * i)) ?? 0xDEAD_BEEF
    }

    /// The stop a delivered exception `v` produces.
    static func fault(_ v: UInt32) -> InterpreterStop { .portOut(port: UInt16(0x80 + v), size: 1, value: 0) }
}

/// The vector of a stop produced by a TestMachine exception stub, or nil.
func stubVector(_ s: InterpreterStop) -> UInt32? {
    if case let .portOut(port, _, _) = s, port >= 0x80, port < 0xD0 { return UInt32(port - 0x80) }
    return nil
}

extension TestMachine {
    /// A TestMachine whose CPU starts in virtual-8086 mode from a host-written state (only the
    /// selectors are set; the interpreter rebuilds the caches): CS:IP = 1000:0000 (the code at
    /// `TestMachine.code`), SS:SP = 2000:FFFE, DS = 3000h, ES = 4000h, FS = 5000h, GS = 6000h.
    static func v86(code: [UInt8], iopl: UInt32 = 0, configure: (inout CPUState) -> Void = { _ in }) throws -> TestMachine {
        try TestMachine(code: code) { s in
            s.eflags = EFlags.vm | (iopl << 12) | 2
            s.cs = SegmentRegister(selector: 0x1000)
            s.ss = SegmentRegister(selector: 0x2000)
            s.ds = SegmentRegister(selector: 0x3000)
            s.es = SegmentRegister(selector: 0x4000)
            s.fs = SegmentRegister(selector: 0x5000)
            s.gs = SegmentRegister(selector: 0x6000)
            s.eip = 0
            s.esp = 0xFFFE
            configure(&s)
        }
    }

    /// The ring-0 frame of an interrupt or exception taken from V86 mode, read from ESP (SDM vol.
    /// 3A, 6.12.1 push order reversed): optional error code, then EIP, CS, EFLAGS, ESP, SS, ES,
    /// DS, FS, GS.
    func v86Frame(errorCode: Bool) -> (error: UInt32?, eip: UInt32, cs: UInt32, eflags: UInt32, esp: UInt32,
                                       ss: UInt32, es: UInt32, ds: UInt32, fs: UInt32, gs: UInt32) {
        let o: UInt32 = errorCode ? 1 : 0
        return (errorCode ? stack(0) : nil, stack(o), stack(o + 1), stack(o + 2), stack(o + 3), stack(o + 4),
                stack(o + 5), stack(o + 6), stack(o + 7), stack(o + 8))
    }
}
