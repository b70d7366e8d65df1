/// The harness runtime's ports, as devices on the bus (`guest/runtime.S` and the host area).

/// Ports 80h–DFh: the IDT stub for vector v writes port 80h + v after building its frame.
public final class FaultStubPorts: PortDevice {
    public let name = "IDT stubs"
    public init() {}
    /// The ports the stubs use.
    public static let ports = Ports.faultBase...(Ports.faultBase + Ports.vectorCount - 1)

    public func write(port: UInt16, size: Int, value: UInt32) -> BusEvent {
        guard let v = Ports.vector(forPort: port) else { return .none }
        return .fault(vector: v)
    }

    public func read(port: UInt16, size: Int) -> UInt32 { 0xFFFF_FFFF }
}

/// Port E9h: each byte written is appended to the run's console output (Bochs' and QEMU's
/// debug-console convention). Reads return E9h, as those emulators answer.
public final class DebugConsole: PortDevice {
    public let name = "debug console"
    /// Everything written so far.
    @exclusivity(unchecked) public private(set) var output = ""
    public init() {}

    public func write(port: UInt16, size: Int, value: UInt32) -> BusEvent {
        output.unicodeScalars.append(Unicode.Scalar(UInt8(truncatingIfNeeded: value)))
        return .none
    }

    public func read(port: UInt16, size: Int) -> UInt32 { 0xE9 }
}

/// Port F0h: runtime calls (EAX selects a `RuntimeCall`; the machine carries them out).
public final class RuntimeCallPort: PortDevice {
    public let name = "runtime calls"
    public init() {}
    public func write(port: UInt16, size: Int, value: UInt32) -> BusEvent { .runtimeCall }
    public func read(port: UInt16, size: Int) -> UInt32 { 0xFFFF_FFFF }
}

/// Ports F1h and F2h: written by the host area's slots (a host handler's address, the
/// guest-call return address); whether that is expected depends on what the machine is running.
public final class HostAreaPorts: PortDevice {
    public let name = "host area"
    public init() {}
    public func write(port: UInt16, size: Int, value: UInt32) -> BusEvent { .hostAreaReached(port: port) }
    public func read(port: UInt16, size: Int) -> UInt32 { 0xFFFF_FFFF }
}

extension DeviceBus {
    /// A bus with the runtime's ports attached; `console` is the debug console on port E9h.
    public static func runtime(console: DebugConsole) -> DeviceBus {
        let bus = DeviceBus()
        // The runtime's ports are disjoint constants: attaching them cannot fail.
        do {
            try bus.attach(FaultStubPorts(), ports: FaultStubPorts.ports)
            try bus.attach(console, ports: Ports.debugConsole...Ports.debugConsole)
            try bus.attach(RuntimeCallPort(), ports: Ports.control...Ports.control)
            try bus.attach(HostAreaPorts(), ports: Ports.hostHandlerEntry...Ports.guestCallReturn)
        } catch {
            preconditionFailure("runtime ports overlap: \(error)")
        }
        return bus
    }
}
