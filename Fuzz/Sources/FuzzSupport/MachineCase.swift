import Foundation
import VMMHarness

/// One fuzz case through the whole Machine on the interpreter: the guest's faults enter the
/// runtime's IDT stubs, the Machine reads and completes the frame, a handler changes it, and the
/// Machine resumes the guest from it (reloading every segment register from the GDT). The handler
/// is either a fuzzed host closure that writes input-chosen values, garbage selectors included,
/// into frame fields, or the Swift VMM with the `critical-fixer` sample device.
///
/// The run must end with a typed result (`Machine.finished`), never a host crash or hang.
///
/// Input layout (short inputs read as zero-padded):
///
/// | bytes | meaning |
/// |---|---|
/// | 0 | bit 0: the VMM handles faults (else the fuzzed closure); bit 1: the closure declines the fault numbered by byte 1 |
/// | 1 | which fault the closure declines (unhandled) |
/// | 2–41 | eight frame edits of 5 bytes: field (mod 20), value |
/// | 42–73 | EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI at entry |
/// | 74– | code at `MemoryMap.imageBase` (at most `codeLimit` bytes), entered in ring 0 |
public enum MachineCase {
    /// Guest memory per case.
    public static let memorySize = 2 << 20
    /// Largest code part used.
    public static let codeLimit = 4096
    /// Interpreter instructions per backend run.
    public static let slice = 512
    /// Backend runs per case before the case is cut off.
    public static let sliceLimit = 16

    /// Runs one case and returns how the run ended (nil only if the machine could not be made).
    @discardableResult
    public static func run(_ input: [UInt8]) -> RunReport? {
        var b = FuzzBytes(input)
        let flags = b.u8()
        let declined = b.u8()
        var edits: [(field: UInt8, value: UInt32)] = []
        for _ in 0..<8 { edits.append((b.u8() % 20, b.u32())) }
        var gpr = [UInt32](repeating: 0, count: 8)
        for i in 0..<8 { gpr[i] = b.u32() }
        let code = b.rest(limit: codeLimit)

        var options = MachineOptions()
        options.memorySize = memorySize
        options.sliceInstructions = slice
        // Never /dev/kvm here: the interpreter is asked for, and the host description must not open it either.
        options.backend.kvmDevicePath = "/nonexistent/kvm"
        // The VMM may call guest code (guest handlers, control procedures); its loops are bounded
        // only by the run's timeout, as in real runs. The closure path is bounded by the slices.
        options.timeout = flags & 1 != 0 ? 2 : nil
        let image = GuestImage(name: "fuzz", bytes: code.isEmpty ? [0xF4] : code)
        let machine: Machine
        do { machine = try Harness.makeMachine(image: image, choice: .interpreter, options: options) } catch { return nil }

        var vmm: VirtualMachineManager?
        if flags & 1 != 0 {
            var config = VMMConfiguration()
            config.vmmCodeRange = MemoryMap.runtimeBase..<MemoryMap.runtimeLimit
            let v = VirtualMachineManager(configuration: config)
            VMMFaultHandling(vmm: v).attach(to: machine)
            if let devices = try? GuestDevice.discover(symbols: machine.image.symbols, memory: machine.memory) {
                for d in devices { try? v.register(d) }
            }
            if let d = SampleDevices.make("critical-fixer", memory: machine.memory) { try? v.register(d) }
            _ = try? v.boot()
            vmm = v
        } else {
            var count = 0
            machine.faultHandling = ClosureFaultHandling { _, frame in
                defer { count += 1 }
                if flags & 2 != 0, count == Int(declined) { return false }
                let e = edits[count % edits.count]
                apply(e.field, e.value, to: &frame)
                return true
            }
        }

        if var s = try? machine.backend.readState() {
            s.eax = gpr[0]; s.ecx = gpr[1]; s.edx = gpr[2]; s.ebx = gpr[3]
            s.esp = gpr[4] == 0 ? s.esp : gpr[4]
            s.ebp = gpr[5]; s.esi = gpr[6]; s.edi = gpr[7]
            try? machine.backend.writeState(s)
        }

        var runs = 0
        while machine.finished == nil, runs < sliceLimit {
            runs += 1
            let exit: GuestExit
            do { exit = try machine.backend.run(instructionBudget: slice) } catch { break }
            machine.handle(exit)
        }
        // Ends the run (if the budget did) so `run()` only builds the report and stops the watchdog.
        if machine.finished == nil { machine.noteGuestCallFailure("fuzz budget spent") }
        let report = machine.run()
        _ = ReportFormatter.listing(report, trace: true)
        _ = vmm?.shutdown()
        return report
    }

    /// Writes `value` into one of the frame's fields (selectors are truncated, not validated).
    static func apply(_ field: UInt8, _ value: UInt32, to f: inout ClientRegisters) {
        let w = UInt16(truncatingIfNeeded: value)
        switch field {
        case 0: f.eax = value
        case 1: f.ebx = value
        case 2: f.ecx = value
        case 3: f.edx = value
        case 4: f.esi = value
        case 5: f.edi = value
        case 6: f.ebp = value
        case 7: f.eip = value
        case 8: f.cs = w
        case 9: f.eflags = value
        case 10: f.esp = value
        case 11: f.ss = w
        case 12: f.ds = w
        case 13: f.es = w
        case 14: f.fs = w
        case 15: f.gs = w
        case 16: f.eip &+= value & 0xF          // skip a few bytes, as a fixer would
        case 17: f.eflags |= EFlags.vm          // ask for a V86 resume
        case 18: f.cs = w | 3; f.ss = UInt16(truncatingIfNeeded: value >> 16)   // to an outer ring
        default: break                          // leave the frame alone
        }
    }
}
