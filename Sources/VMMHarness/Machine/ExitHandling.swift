/// What the machine does next after one backend exit.
public enum ExitAction: Equatable, Sendable {
    /// Run the guest again.
    case resume
    /// Answer the pending IN (or INS element) with `value`, then run again.
    case answerPortIn(value: UInt32)
    /// An IDT stub handed `vector` to the host: read the frame, dispatch, resume.
    case dispatchFault(vector: UInt8)
    /// The runtime's control port: carry out the `RuntimeCall` in EAX.
    case runtimeCall
    /// The guest reached the host area (port F1h or F2h): expected only in a guest call.
    case hostAreaReached(port: UInt16)
    /// The guest reached a breakpoint the machine set: expected only in a guest call.
    case breakpoint(address: UInt32)
    /// An access to guest-physical memory that neither RAM nor a device claims.
    case unclaimedMMIO(address: UInt64, isWrite: Bool, length: Int)
    /// The run ends.
    case finish(reason: ExitReason, message: String)
}

/// Turns a backend exit into what to do next (firecracker's split of running from handling):
/// port and MMIO accesses go to the device bus, whose devices carry them out; everything else is
/// decided from the exit alone. Tests drive it with made-up exits and no backend.
public enum ExitHandling {
    /// The action for `exit`. Port writes and reads are performed on `bus` (that is the devices'
    /// effect); the action says what remains for the machine.
    public static func action(for exit: GuestExit, bus: DeviceBus) -> ExitAction {
        switch exit {
        case let .portOut(port, size, value):
            return action(for: bus.write(port: port, size: size, value: value))
        case let .portIn(port, size):
            return .answerPortIn(value: bus.read(port: port, size: size))
        case let .mmio(address, isWrite, length, data):
            guard let device = bus.mmioDevice(at: address) else {
                return .unclaimedMMIO(address: address, isWrite: isWrite, length: length)
            }
            guard isWrite else {
                return .finish(reason: .backendError,
                               message: "MMIO read from \(device.name) at \(hex(address, width: 8)): no backend completes MMIO reads yet")
            }
            return action(for: device.write(address: address, length: length, value: data))
        case .halt:
            return .finish(reason: .halt, message: "the guest executed HLT")
        case let .shutdown(reason):
            return .finish(reason: .shutdown, message: reason)
        case let .failEntry(reason):
            return .finish(reason: .failEntry,
                           message: "KVM_EXIT_FAIL_ENTRY, hardware entry failure reason \(hex(reason, width: 16, prefix: "0x"))")
        case let .internalError(suberror, data, bytes):
            if suberror == 1 {
                return .finish(reason: .emulationFailure,
                               message: "KVM could not emulate the instruction [\(hexBytes(bytes))] and no assist is configured")
            }
            return .finish(reason: .backendError,
                           message: "KVM_EXIT_INTERNAL_ERROR suberror \(suberror), data \(data.map { hex($0, width: 16, prefix: "0x") })")
        case let .assistFailed(bytes, address, why):
            return .finish(reason: .emulationFailure,
                           message: "KVM could not emulate [\(hexBytes(bytes))] at \(hex(address)) and the assist failed: \(why)")
        case .interrupted, .interruptWindowOpen:
            // The loop offers a pending interrupt after every exit (see `Machine.run(until:)`).
            return .resume
        case let .breakpoint(address):
            return .breakpoint(address: address)
        case let .singleStep(address):
            return .finish(reason: .backendError, message: "unexpected single-step stop at \(hex(address))")
        case let .unknown(reason):
            return .finish(reason: .backendError, message: "unknown exit reason \(reason)")
        }
    }

    /// The action for what a device asked of the machine.
    @inline(__always)
    static func action(for event: BusEvent) -> ExitAction {
        switch event {
        case .none: return .resume
        case let .fault(vector): return .dispatchFault(vector: vector)
        case .runtimeCall: return .runtimeCall
        case let .hostAreaReached(port): return .hostAreaReached(port: port)
        case let .stop(reason, message): return .finish(reason: reason, message: message)
        }
    }

    static func hexBytes(_ bytes: [UInt8]) -> String {
        bytes.map { hex($0, width: 2, prefix: "") }.joined(separator: " ")
    }
}
