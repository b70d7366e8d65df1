import VMMHarness

/// A virtual device that hooks #DE (00h) while it processes Sys_Critical_Init, so its handler
/// runs last, after the VMM's own handler has passed the fault on.
final class DivideFixer: VirtualDevice {
    let name = "DIVFIX"
    let deviceID: UInt16 = 0x7E00
    let initOrder: UInt32 = 0x8000_0000

    func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool {
        guard message == .sysCriticalInit else { return true }
        do {
            // Hook_VMM_Fault: returns the previous handler (nil: none) or throws for 02h / > 4Fh.
            let previous = try vmm.hookVMMFault(0x00, name: "DIVFIX") { registers, frame, context in
                frame.eax = 0xFFFF_FFFF   // the "result" of the division
                frame.eip &+= 2           // skip DIV ECX (F7 F1)
                return .processed         // a near RET in the DDK's words
            }
            print("hooked #DE, previous handler:", previous.map { "\($0)" } ?? "none")
            return true
        } catch {
            return false                  // carry set: the device is not loaded
        }
    }
}

let source = """
    .globl _start
_start:
    movl $1, %eax
    xorl %edx, %edx
    xorl %ecx, %ecx
    divl %ecx
    hlt
"""
do {
    let scenario = Scenario(image: try GuestAssembler.assemble(source: source, name: "example.S"))
    let report = try Harness.run(scenario) { vmm throws(HarnessError) in
        do { try vmm.register(DivideFixer()) } catch { throw .invalidArgument("\(error)") }
    }
    print(ReportFormatter.listing(report, trace: true))
} catch {
    print("error:", error)
}
