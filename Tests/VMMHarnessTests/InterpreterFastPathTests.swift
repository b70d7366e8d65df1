import Testing
@testable import VMMHarness
@testable import VMMHarnessDifferential
@testable import VMMHarnessBench

/// The run loop's fast path (`InterpreterFastPath.swift`) against the general path: `step()` never
/// takes the fast path, `run(budget:)` does, so both must end in the same state.
@Suite struct InterpreterFastPathTests {
    static let data: UInt32 = 0x0020_0000

    /// A random straight-line program of fast-path instructions (register, memory [EBX+disp8]
    /// and immediate ALU forms with every operation, INC/DEC, MOV, PUSH, PUSHAD, Jcc rel8 over
    /// one instruction), repeated by a DEC ECX / JNZ loop, then HLT.
    static func program(seed: UInt64) -> [UInt8] {
        var g = seed
        func next() -> UInt32 {
            g = g &* 6364136223846793005 &+ 1442695040888963407
            return UInt32(truncatingIfNeeded: g >> 33)
        }
        var body: [UInt8] = []
        // Registers EAX, EDX, ESI, EDI, EBP are free; EBX is the data pointer, ECX the counter.
        let free: [UInt8] = [0, 2, 5, 6, 7]
        func reg() -> UInt8 { free[Int(next() % UInt32(free.count))] }
        for _ in 0..<40 {
            let aop = UInt8(next() % 8)
            let disp = UInt8(next() % 16) * 4
            switch next() % 12 {
            case 0: body += [aop << 3 | 1, 0xC0 | reg() << 3 | reg()]            // op r, r
            case 1: body += [aop << 3 | 3, 0xC0 | reg() << 3 | reg()]            // op r, r (reverse)
            case 2: body += [aop << 3 | 3, 0x43 | reg() << 3, disp]              // op r, [ebx+d]
            case 3: body += [aop << 3 | 1, 0x43 | reg() << 3, disp]              // op [ebx+d], r
            case 4: body += [0x83, 0xC0 | aop << 3 | reg(), UInt8(next() & 0xFF)] // op r, imm8
            case 5: body += [0x81, 0xC0 | aop << 3 | reg()] + BenchGuests.le32(next())
            case 6: body += [0x83, 0x43 | aop << 3, disp, UInt8(next() & 0xFF)]  // op [ebx+d], imm8
            case 7: body += [next() & 1 == 0 ? 0x40 | reg() : 0x48 | reg()]      // inc/dec
            case 8: body += [0x8B, 0x43 | reg() << 3, disp]                      // mov r, [ebx+d]
            case 9: body += [0x89, 0x43 | reg() << 3, disp]                      // mov [ebx+d], r
            case 10: body += [0x70 | UInt8(next() % 16), 0x01, 0x90]             // jcc over a nop
            default:
                // push r / push imm8 / pushad, then restore ESP with a general-path LEA.
                switch next() % 3 {
                case 0: body += [0x50 | reg(), 0x8D, 0x64, 0x24, 0x04]
                case 1: body += [0x6A, UInt8(next() & 0xFF), 0x8D, 0x64, 0x24, 0x04]
                default: body += [0x60, 0x8D, 0x64, 0x24, 0x20]
                }
            }
        }
        body += [0x49]  // dec ecx
        var bytes: [UInt8] = [0xB9] + BenchGuests.le32(20) + [0xBB] + BenchGuests.le32(data)
        let back = -(body.count + 6)
        bytes += body + [0x0F, 0x85] + BenchGuests.le32(UInt32(bitPattern: Int32(back))) + [0xF4]
        return bytes
    }

    func machine(_ code: [UInt8], seed: UInt64) throws -> TestMachine {
        let m = try TestMachine(code: code) { s in
            s.eax = UInt32(truncatingIfNeeded: seed &* 0x9E37_79B9)
            s.edx = 0x8000_0000; s.esi = 0x7FFF_FFFF; s.edi = 1; s.ebp = 0xFFFF_FFFF
        }
        var seedData = seed
        for i in UInt32(0)..<32 {
            seedData = seedData &* 6364136223846793005 &+ 1
            try m.memory.write32(Self.data + 4 * i, UInt32(truncatingIfNeeded: seedData >> 29))
        }
        return m
    }

    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8])
    func fastPathMatchesGeneralPath(seed: UInt64) throws {
        let code = Self.program(seed: seed)
        let fast = try machine(code, seed: seed)
        let slow = try machine(code, seed: seed)
        #expect(fast.cpu.run(budget: 1_000_000) == .halt)
        var stop: InterpreterStop? = nil
        for _ in 0..<1_000_000 {
            stop = slow.cpu.step()
            if stop != nil { break }
        }
        #expect(stop == .halt)
        #expect(fast.cpu.state == slow.cpu.state)
        #expect(fast.cpu.instructionsExecuted == slow.cpu.instructionsExecuted)
        #expect(try fast.memory.readBytes(Self.data, count: 128) == slow.memory.readBytes(Self.data, count: 128))
        #expect(try fast.memory.readBytes(TestMachine.ring0Stack - 64, count: 64)
                    == slow.memory.readBytes(TestMachine.ring0Stack - 64, count: 64))
    }

    /// A fast-path store into the next instruction's immediate is seen by the next fetch.
    @Test func selfModifyingCodeIsSeen() throws {
        // mov eax, 5; mov [next+1], eax (patches the imm32 of the following mov ebx, 0); mov ebx, 0; hlt
        let next = TestMachine.code + 5 + 6
        let code: [UInt8] = [0xB8, 5, 0, 0, 0, 0x89, 0x05] + BenchGuests.le32(next + 1)
            + [0xBB, 0, 0, 0, 0, 0xF4]
        let m = try TestMachine(code: code)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.ebx == 5)
        // Again on the same machine, now with `mov ebx, 5` in the decode cache: the store
        // patches it to 7, and the stale cached instruction must not be used.
        try m.memory.writeBytes(next + 1, [0, 0, 0, 0])
        var s = m.cpu.state
        s.eip = TestMachine.code
        s.eax = 7
        m.cpu.state = s
        try m.memory.writeBytes(TestMachine.code + 1, [7])
        #expect(m.run() == .halt)
        #expect(m.cpu.state.ebx == 7)
    }

    /// A memory operand outside RAM leaves the fast path: the general path stops with `.mmio` and
    /// the instruction has no effect (EIP at it).
    @Test func accessOutsideRAMTakesTheGeneralPath() throws {
        let code: [UInt8] = [0x01, 0x05] + BenchGuests.le32(0xF000_0000) + [0xF4]  // add [F000_0000h], eax
        let m = try TestMachine(code: code)
        let stop = m.run()
        guard case .mmio = stop else {
            Issue.record("expected an MMIO stop, got \(stop)")
            return
        }
        #expect(m.cpu.state.eip == TestMachine.code)
    }

    /// With EFLAGS.TF set every instruction traps (#DB), fast-path instructions included.
    @Test func singleStepStillTraps() throws {
        let m = try TestMachine(code: [0x40, 0x40, 0xF4]) { s in s.eflags = EFlags.tf | 2 }
        #expect(stubVector(m.run()) == 1)
        #expect(m.cpu.state.eax == 1)
    }
}
