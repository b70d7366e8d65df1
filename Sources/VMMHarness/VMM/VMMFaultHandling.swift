/// Connects the machine to the VMM: every fault the guest raises goes through
/// `VirtualMachineManager.dispatchFault`, and the frame the handlers leave is what the guest
/// resumes with.
public final class VMMFaultHandling: FaultHandling {
    public let vmm: VirtualMachineManager

    public init(vmm: VirtualMachineManager) {
        self.vmm = vmm
    }

    public func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        // The registers of `call [FaultProc]`: the interrupted code's general registers (the stub's
        // PUSHAD left them unchanged), the stub's ring-0 segments and stack; the VMM sets EBX, EBP
        // and clears IF.
        var entry = HandlerRegisters(event.stubState)
        entry.eax = frame.eax; entry.ebx = frame.ebx; entry.ecx = frame.ecx; entry.edx = frame.edx
        entry.esi = frame.esi; entry.edi = frame.edi
        do {
            let outcome = try vmm.dispatchFault(vector: event.vector, frame: &frame, frameAddress: event.frameAddress,
                                                entryRegisters: entry)
            details.dispatch = outcome.trace
            details.trace = outcome.trace.description.split(separator: "\n").map(String.init)
            switch outcome.result {
            case let .processed(_, name):
                return .resume(handledBy: name)
            case let .unhandled(report):
                return .unhandled(report: report.message)
            case let .terminated(report):
                return .stop(reason: .fatalError, message: report.description)
            }
        } catch {
            switch error {
            case let .registerViolation(_, trace), let .noGuestCallout(_, trace), let .guestCallout(_, _, trace):
                details.dispatch = trace
                details.trace = trace.description.split(separator: "\n").map(String.init)
            default:
                break
            }
            return .stop(reason: .handlerError, message: error.description)
        }
    }

    /// What the VMM did over the whole run, for the report.
    public var summary: VMMSummary {
        VMMSummary(version: String(format: "%d.%02X", vmm.configuration.version.major, vmm.configuration.version.minor),
                   boot: vmm.bootLog.map(\.description),
                   diagnostics: vmm.diagnostics.map(\.description),
                   debugLog: vmm.debugLog)
    }
}

/// The VMM's part of a run report.
public struct VMMSummary: Sendable, Codable, Equatable {
    /// Get_VMM_Version's answer, e.g. "4.0A".
    public var version: String
    /// Control messages sent, the VMM's own hooks, devices unloaded.
    public var boot: [String]
    /// What the debug VMM would have printed: register-rule violations, synchronous services
    /// called from fault handlers, bad service arguments.
    public var diagnostics: [String]
    /// Out_Debug_String / Out_Debug_Chr output.
    public var debugLog: String
}
