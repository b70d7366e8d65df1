import Foundation
import Testing
@testable import VMMHarness
@testable import VMMHarnessDifferential

/// Differential testing with generated programs: the generator's own properties, the interpreter
/// alone on many programs, and KVM against the interpreter.
///
/// `VMM_HARNESS_DIFF_COUNT` (programs for the KVM comparison) and `VMM_HARNESS_DIFF_SEED` (the
/// campaign seed, decimal or 0x-hex) make the KVM test a long run; `scripts/differential.sh` sets them.
struct DifferentialRandomTests {
    static let environment = ProcessInfo.processInfo.environment

    static var campaignSeed: UInt64 {
        guard let s = environment["VMM_HARNESS_DIFF_SEED"] else { return 0x5EED_D1FF }
        if s.hasPrefix("0x") || s.hasPrefix("0X") { return UInt64(s.dropFirst(2), radix: 16) ?? 0x5EED_D1FF }
        return UInt64(s) ?? 0x5EED_D1FF
    }

    /// Programs for the KVM comparison: about 15 s on a PVM host at ~140 programs/s (the test prints its rate).
    static var campaignCount: Int { environment["VMM_HARNESS_DIFF_COUNT"].flatMap { Int($0) } ?? 3000 }

    @Test func sameSeedSameBytesDifferentSeedsDiffer() {
        var seen = Set<[UInt8]>()
        for seed in UInt64(0)..<100 {
            let a = ProgramGenerator(seed: seed).generate()
            let b = ProgramGenerator(seed: seed).generate()
            #expect(a.code() == b.code(), "seed \(seed): not reproducible")
            #expect(a.initialData == b.initialData, "seed \(seed): data not reproducible")
            #expect(a.undefinedFlagsBefore == b.undefinedFlagsBefore, "seed \(seed)")
            seen.insert(a.code())
        }
        #expect(seen.count == 100, "different seeds gave identical programs")
    }

    @Test func programsDecodeCompletelyAndEndInHLT() {
        for n in 0..<500 {
            let seed = DifferentialCampaign.programSeed(1, n)
            let p = ProgramGenerator(seed: seed).generate()
            #expect(p.undefinedFlagsBefore.count == p.instructions.count + 1, "seed \(hex(seed))")
            let code = p.code()
            #expect(code.last == 0xF4, "seed \(hex(seed)): no final HLT")
            #expect(code.count <= GeneratedProgram.codeSize, "seed \(hex(seed)): \(code.count) bytes of code")
            var offset = 0
            for (i, ins) in p.instructions.enumerated() {
                #expect(ins.offset == offset, "seed \(hex(seed)) #\(i): offset")
                switch X86Decoder.decode(ins.bytes) {
                case let .success(d):
                    #expect(Int(d.length) == ins.bytes.count,
                            "seed \(hex(seed)) #\(i) [\(ins.hexBytes)] \(ins.text): decoded length \(d.length)")
                    // The only #UD is a deliberate UD2 (0F 0B), which decodes and faults when run.
                    if d.opcode == 0x10B { #expect(ins.text == "ud2" && ins.mayFault) }
                case let .failure(f):
                    Issue.record("seed \(hex(seed)) #\(i) [\(ins.hexBytes)] \(ins.text): \(f)")
                }
                offset += ins.bytes.count
            }
            // The same walk over the flat code reaches the HLT exactly.
            var pos = 0
            while pos < code.count - 1 {
                guard case let .success(d) = X86Decoder.decode(Array(code[pos..<min(pos + 15, code.count)])) else {
                    Issue.record("seed \(hex(seed)): code does not decode at offset \(pos)")
                    break
                }
                pos += Int(d.length)
            }
            #expect(pos == code.count - 1, "seed \(hex(seed)): walk ended at \(pos)")
        }
    }

    @Test func undefinedFlagTableFollowsTheSDM() {
        typealias F = ArithmeticFlags
        // SHL r8 by 8: CF undefined (count >= size), OF undefined (count != 1), AF undefined.
        let shl8 = FlagEffect.shift(4, bits: 8, count: 8)
        #expect(shl8.undefines == F.cf | F.of | F.af && shl8.defines == F.sf | F.zf | F.pf)
        // SAR r8 by 8: CF stays defined (the sign).
        #expect(FlagEffect.shift(7, bits: 8, count: 8).defines & F.cf != 0)
        // ROL by 1: CF and OF defined, nothing undefined. ROL by 32: count masked to 0, no effect.
        #expect(FlagEffect.shift(0, bits: 32, count: 1) == FlagEffect(defines: F.cf | F.of))
        #expect(FlagEffect.shift(0, bits: 32, count: 32) == FlagEffect())
        // RCR reads CF.
        #expect(FlagEffect.shift(3, bits: 16, count: nil).reads == F.cf)
        #expect(FlagEffect.divide.undefines == F.all)
        #expect(FlagEffect.bitScan.defines == F.zf)
    }

    /// Every program runs to its HLT on the interpreter; the faults on the way are the deliberate ones.
    @Test func interpreterRunsEveryProgramToHLT() throws {
        let runner = try DifferentialRunner(kvm: false)
        let expected: Set<UInt8> = [0x00, 0x03, 0x04, 0x05, 0x06, 0x0B, 0x0D]
        var faults = 0
        for n in 0..<300 {
            let seed = DifferentialCampaign.programSeed(2, n)
            let p = ProgramGenerator(seed: seed).generate()
            let o = try runner.run(p.image(), on: .interpreter)
            #expect(o.exit == .halt, "seed \(hex(seed, width: 16, prefix: "0x")): \(o.exit.rawValue) \(o.exitMessage)")
            #expect(o.registers?.esp ?? 0 <= GeneratedProgram.stackTop, "seed \(hex(seed, width: 16, prefix: "0x")): ESP above the stack top")
            for f in o.faults {
                faults += 1
                #expect(expected.contains(f.vector), "seed \(hex(seed, width: 16, prefix: "0x")): unexpected \(ExceptionNames.name(f.vector)) at \(hex(f.eip))")
                // Faults point at a deliberate instruction; traps (#BP, #OF) just past one.
                let at = f.vector == 3 || f.vector == 4 ? p.instructions.last { $0.offset < Int(f.eip &- GeneratedProgram.codeBase) }
                                                          : p.index(at: f.eip).flatMap { p.instructions.indices.contains($0) ? p.instructions[$0] : nil }
                #expect(at?.mayFault == true, "seed \(hex(seed, width: 16, prefix: "0x")): \(ExceptionNames.name(f.vector)) at \(hex(f.eip)) from a non-faulting instruction")
            }
        }
        #expect(faults > 100, "the programs should fault now and then")
    }

    /// The comparison catches a difference and narrows it to the instruction that causes it: the
    /// interpreter runs the program with one instruction's immediate changed.
    @Test(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens (\(TestSupport.kvmSkipReason))"))
    func aPlantedDifferenceIsFoundAtItsInstruction() throws {
        let runner = try DifferentialRunner(kvm: true)
        var found = 0
        for seed in UInt64(0)..<40 {
            let p = ProgramGenerator(seed: seed).generate()
            // Instruction 3 of the prologue is MOV EBX, imm32 (BB id).
            var changed = p.instructions
            #expect(changed[3].bytes.first == 0xBB)
            for b in 1...4 { changed[3].bytes[b] ^= 0xFF }
            let variant = GeneratedProgram(seed: seed, instructions: changed, undefinedFlagsBefore: p.undefinedFlagsBefore,
                                           initialData: p.initialData)
            // (EBX may be overwritten before anything depends on it: then there is nothing to find.)
            let (m, _) = try runner.compare(p, interpreterRuns: variant)
            if let m {
                found += 1
                #expect(m.instructionIndex == 3, "seed \(seed): \(m)")
                #expect(m.differences.contains { $0.hasPrefix("EBX") }, "seed \(seed): \(m)")
            }
            let (same, _) = try runner.compare(p)
            #expect(same == nil, "seed \(seed): \(same.map { "\($0)" } ?? "")")
        }
        #expect(found >= 8, "only \(found) of 40 planted differences were seen")
    }

    /// KVM against the interpreter over `campaignCount` programs; every mismatch names its seed and
    /// its first differing instruction.
    @Test(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens (\(TestSupport.kvmSkipReason))"))
    func kvmAndInterpreterAgreeOnRandomPrograms() throws {
        let count = Self.campaignCount
        let seed = Self.campaignSeed
        let result = try DifferentialCampaign.run(count: count, seed: seed, maxMismatches: 50) { n, r in
            if (n + 1) % 500 == 0 { print("differential: \(n + 1) programs, \(r.mismatches.count) mismatches") }
        }
        let rate = Double(result.programs) / max(result.seconds, 1e-9)
        print("differential: \(result.programs) programs (\(result.instructions) instructions, \(result.assists) assists) "
              + "from seed \(hex(seed, width: 16, prefix: "0x")) in \(String(format: "%.1f", result.seconds)) s, "
              + "\(String(format: "%.1f", rate)) programs/s, \(result.mismatches.count) mismatches")
        print("differential: assisted opcodes: " + result.assistedOpcodes.sorted { $0.value > $1.value }.map { "\($0.key)×\($0.value)" }.joined(separator: " "))
        for m in result.mismatches {
            print(m.description)
            Issue.record("\(m)")
        }
    }
}
