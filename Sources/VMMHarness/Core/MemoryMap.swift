/// Where everything lives in guest-physical memory (identical to linear addresses while paging is
/// off). The README's "Memory map" section is this table.
///
/// | range | what |
/// |---|---|
/// | 0000_0000–0000_0FFF | null page, left zero |
/// | 0000_1000–0000_FFFF | runtime image: header, GDT, IDT (00h–4Fh), TSS, IDT stubs (`guest/runtime.S`) |
/// | 0001_0000–0001_FFFF | ring-0 stack for faults taken from ring 3 (TSS.ESP0 = 0001_FFCC, so the 6Ch-byte frame of a ring-3 fault ends at 0002_0000) |
/// | 0002_0000–0007_FFFF | ring-0 stack the user image starts with (ESP = 0008_0000) |
/// | 0008_0000–0008_FFFF | ring-3 stack (top 0009_0000) |
/// | 0009_0000–0009_FFFF | host area: guest-visible addresses of host handlers, scratch |
/// | 000A_0000–000F_FFFF | reserved |
/// | 0010_0000–end | user image (flat binary or assembled `.S`), loaded at 1 MiB |
public enum MemoryMap {
    /// Default guest memory size: 16 MiB.
    public static let defaultMemorySize = 16 << 20
    /// Load address of the runtime image.
    public static let runtimeBase: UInt32 = 0x0000_1000
    /// Largest runtime image.
    public static let runtimeLimit: UInt32 = 0x0001_0000
    /// TSS.ESP0: the ring-0 stack used for interrupts and faults taken from ring 3. The CPU pushes
    /// SS, ESP, EFLAGS, CS, EIP; the stub an error code and PUSHAD: 38h bytes. ESP0 leaves room
    /// above that for Client_ES..Client_Alt_GS, so the complete 6Ch-byte frame ends at 0002_0000.
    public static let ring0FaultStackTop: UInt32 = 0x0002_0000 - 0x34
    /// ESP the user image starts with.
    public static let ring0StackTop: UInt32 = 0x0008_0000
    /// Top of the stack ring-3 code gets by default.
    public static let ring3StackTop: UInt32 = 0x0009_0000
    /// Host area (guest-visible addresses that stand for host code).
    public static let hostAreaBase: UInt32 = 0x0009_0000
    public static let hostAreaSize: UInt32 = 0x0001_0000
    /// Where a guest procedure the host calls (a control procedure, a guest FaultProc) returns to:
    /// the host pushes this address, and the bytes there exit to the host (`Ports.guestCallReturn`).
    public static let guestCallReturn: UInt32 = 0x0009_F800
    /// Load address of the user image (page aligned).
    public static let imageBase: UInt32 = 0x0010_0000
}

/// The selectors of the runtime's flat GDT (`guest/runtime.S`). The ring-0 code selector is 28h, as
/// in the Windows 9x VMM, so reports read "0028:xxxxxxxx" as Windows did.
public enum Selectors {
    public static let tss: UInt16 = 0x08
    /// A writable data segment marked not present (for #NP / #SS scenarios).
    public static let notPresentData: UInt16 = 0x10
    public static let ring3Code: UInt16 = 0x1B
    public static let ring3Data: UInt16 = 0x23
    public static let ring0Code: UInt16 = 0x28
    public static let ring0Data: UInt16 = 0x30
}

/// The I/O ports of the guest/host protocol.
public enum Ports {
    /// An IDT stub for vector v exits with `OUT` to port `faultBase + v` (80h–DFh).
    public static let faultBase: UInt16 = 0x80
    /// Number of vectors with stubs: 00h–4Fh (what Hook_VMM_Fault covers) and 50h–5Fh (the
    /// virtual PIC's IRQ 0–15).
    public static let vectorCount: UInt16 = 0x60
    /// Runtime services ("hypercalls"): EAX = function, see `RuntimeCall`.
    public static let control: UInt16 = 0xF0
    /// Debug console: each byte written is appended to the run's console output.
    public static let debugConsole: UInt16 = 0xE9
    /// Written by the stub at every host-handler slot of the host area: the guest jumped to (or
    /// called) the guest-visible address of a host (Swift or VMM) handler.
    public static let hostHandlerEntry: UInt16 = 0xF1
    /// Written at `MemoryMap.guestCallReturn`: a guest procedure the host called returned.
    public static let guestCallReturn: UInt16 = 0xF2

    /// The vector a fault-stub port stands for, or nil.
    @inline(__always)
    public static func vector(forPort port: UInt16) -> UInt8? {
        port >= faultBase && port < faultBase + vectorCount ? UInt8(port - faultBase) : nil
    }
}

/// Functions of the control port (`Ports.control`), selected by EAX.
public enum RuntimeCall: UInt32, Sendable {
    /// Enter ring 3 at ECX with ESP = EDX (flat ring-3 segments, EFLAGS = ESI with IF/IOPL as given).
    /// Exists because some hosts (PVM KVM) cannot run IRET or a far RET to an outer ring.
    case enterRing3 = 1
    /// Record EBX as a named checkpoint value (ECX = tag) in the report.
    case checkpoint = 2
    /// Enter V86 mode at CS:IP = EDI[15:0]:ECX with SS:SP = EDI[31:16]:EDX, DS = ES = FS = GS = CS,
    /// EFLAGS = ESI with VM set. (Needs a host that runs V86: the interpreter on PVM hosts.)
    case enterV86 = 3
    /// Raise a non-maskable interrupt: KVM_NMI on KVM, the same delivery in the interpreter.
    case raiseNMI = 4
    /// Raise IRQ ECX (0–15) at the virtual PIC; it is delivered on vector 50h+IRQ when EFLAGS.IF is set.
    case raiseIRQ = 5
}
