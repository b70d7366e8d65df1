import VMMHarness
/// The guest programs the benchmark runs, as machine code (no assembler needed, so they run
/// wherever the harness builds). Each is loaded at `MemoryMap.imageBase` and starts at ring 0 with
/// the runtime's flat segments, as every image does.
public enum BenchGuests {
    /// `mov ecx, count; xor ebx, ebx; mov eax, 100h; loop: <fault>; dec ecx; jnz loop; hlt`.
    ///
    /// EBX = 0 is the divisor of `DIV EBX`; AX = 100h is the bad selector of `MOV DS, AX`. The handler
    /// must advance `Client_EIP` by `kind.resumeAdvance` for the loop to make progress.
    public static func faultLoop(_ kind: BenchFaultKind, count: UInt32) -> GuestImage {
        let body = kind.instructionBytes + [0x49]          // <fault>; dec ecx
        let back = -(body.count + 2)                          // jnz rel8 back to loop
        let bytes: [UInt8] = [0xB9] + le32(count)             // mov ecx, count
            + [0x31, 0xDB]                                    // xor ebx, ebx
            + [0xB8] + le32(UInt32(BenchFaultKind.badSelector)) // mov eax, 100h
            + body + [0x75, UInt8(bitPattern: Int8(back))]    // jnz loop
            + [0xF4]                                          // hlt
        let loop = MemoryMap.imageBase + 12
        return GuestImage(name: "bench \(kind.label) loop", bytes: bytes,
                          symbols: ["_start": MemoryMap.imageBase, "loop": loop])
    }

    /// Guest instructions per iteration of `aluLoop`.
    public static let aluInstructionsPerIteration = 10

    /// Where `aluLoop` keeps its memory operands.
    public static let aluData: UInt32 = 0x0020_0000

    /// Register and memory ALU instructions, ten per iteration:
    ///
    ///     loop: add eax, ebx; xor edx, eax; sub edi, 3; and ebx, edx
    ///           add [data], eax; mov ebp, [data]; or edx, [data+4]; inc ebx
    ///           dec ecx; jnz loop
    ///     hlt
    public static func aluLoop(iterations: UInt32) -> GuestImage {
        let body: [UInt8] = [0x01, 0xD8,                       // add eax, ebx
                             0x31, 0xC2,                       // xor edx, eax
                             0x83, 0xEF, 0x03,                 // sub edi, 3
                             0x21, 0xD3]                       // and ebx, edx
            + [0x01, 0x05] + le32(aluData)                    // add [data], eax
            + [0x8B, 0x2D] + le32(aluData)                    // mov ebp, [data]
            + [0x0B, 0x15] + le32(aluData + 4)                // or edx, [data+4]
            + [0x43, 0x49]                                    // inc ebx; dec ecx
        let back = -(body.count + 2)
        let bytes: [UInt8] = [0xB9] + le32(iterations) + body + [0x75, UInt8(bitPattern: Int8(back)), 0xF4]
        return GuestImage(name: "bench ALU loop", bytes: bytes,
                          symbols: ["_start": MemoryMap.imageBase, "loop": MemoryMap.imageBase + 5])
    }

    static func le32(_ v: UInt32) -> [UInt8] {
        [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v >> 16),
         UInt8(truncatingIfNeeded: v >> 24)]
    }
}
