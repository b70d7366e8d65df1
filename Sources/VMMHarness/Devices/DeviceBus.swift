/// What a port write asks of the machine beyond the device's own effect. General devices (a
/// serial port, an exit port, a timer) return `.none` or `.stop`; the harness runtime's ports
/// return the events its protocol defines.
public enum BusEvent: Equatable, Sendable {
    /// Nothing more: the guest continues.
    case none
    /// An IDT stub handed fault or interrupt `vector` to the host (ports 80h–DFh).
    case fault(vector: UInt8)
    /// The runtime's control port (F0h): EAX selects a `RuntimeCall`.
    case runtimeCall
    /// The guest reached the host area: `Ports.hostHandlerEntry` (a Swift or VMM handler's
    /// address) or `Ports.guestCallReturn` (a procedure the host called returned).
    case hostAreaReached(port: UInt16)
    /// The device ends the run.
    case stop(reason: ExitReason, message: String)
}

/// A device on the I/O port bus. One device may claim several ports.
public protocol PortDevice: AnyObject {
    /// Short name for reports and errors.
    var name: String { get }
    /// The guest wrote `value` (`size` bytes: 1, 2 or 4) to `port`.
    func write(port: UInt16, size: Int, value: UInt32) -> BusEvent
    /// The guest reads `size` bytes from `port`.
    func read(port: UInt16, size: Int) -> UInt32
}

/// A device mapped at guest-physical addresses where there is no RAM (`KVM_EXIT_MMIO`).
public protocol MMIODevice: AnyObject {
    var name: String { get }
    /// The guest wrote `length` bytes (`value`, little-endian) at `address`.
    func write(address: UInt64, length: Int, value: UInt64) -> BusEvent
    /// The guest reads `length` bytes at `address`.
    func read(address: UInt64, length: Int) -> UInt64
}

/// Why a device could not be attached.
public enum DeviceBusError: Error, Equatable, Sendable, CustomStringConvertible {
    case portTaken(port: UInt16, by: String)
    case rangeOverlaps(start: UInt64, by: String)
    case emptyRange

    public var description: String {
        switch self {
        case let .portTaken(port, by): return "port \(hex(port, width: 4)) is already claimed by \(by)"
        case let .rangeOverlaps(start, by): return "MMIO range at \(hex(start, width: 8)) overlaps \(by)"
        case .emptyRange: return "empty MMIO range"
        }
    }
}

/// The machine's I/O port and MMIO bus. Ports nobody claims float high on reads (all ones) and
/// ignore writes, as an ISA bus does; an MMIO access nobody claims ends the run as `.mmio`.
///
/// Port lookup is one load from a 64 Ki-entry table: this is on every fault's path (the IDT stubs
/// exit through ports).
public final class DeviceBus {
    // Read on every port exit, written only while devices are attached, on one thread: the
    // runtime's dynamic exclusivity checks would only cost time.
    @exclusivity(unchecked) private var ports: [any PortDevice] = []
    /// Index + 1 into `ports` for every port number (0: unclaimed).
    @exclusivity(unchecked) private var portTable = [UInt8](repeating: 0, count: 0x1_0000)
    @exclusivity(unchecked) private var mmio: [(range: Range<UInt64>, device: any MMIODevice)] = []

    public init() {}

    /// Claims `portRange` for `device`. A port already claimed is refused.
    public func attach(_ device: any PortDevice, ports portRange: ClosedRange<UInt16>) throws(DeviceBusError) {
        for p in portRange where portTable[Int(p)] != 0 {
            throw .portTaken(port: p, by: ports[Int(portTable[Int(p)]) - 1].name)
        }
        let index: Int
        if let existing = ports.firstIndex(where: { $0 === device }) {
            index = existing
        } else {
            guard ports.count < 255 else { throw .portTaken(port: portRange.lowerBound, by: "(bus full)") }
            ports.append(device)
            index = ports.count - 1
        }
        for p in portRange { portTable[Int(p)] = UInt8(index + 1) }
    }

    /// Maps `device` at guest-physical `range` (which must not overlap another device).
    public func attach(_ device: any MMIODevice, at range: Range<UInt64>) throws(DeviceBusError) {
        guard !range.isEmpty else { throw .emptyRange }
        if let other = mmio.first(where: { $0.range.overlaps(range) }) {
            throw .rangeOverlaps(start: range.lowerBound, by: other.device.name)
        }
        mmio.append((range, device))
    }

    /// The device that claims `port`, if any.
    @inline(__always)
    public func device(at port: UInt16) -> (any PortDevice)? {
        let i = Int(portTable[Int(port)])
        return i == 0 ? nil : ports[i - 1]
    }

    /// A port write: the claiming device's event, `.none` for an unclaimed port.
    @inline(__always)
    public func write(port: UInt16, size: Int, value: UInt32) -> BusEvent {
        device(at: port)?.write(port: port, size: size, value: value) ?? .none
    }

    /// A port read: the claiming device's answer, all ones (for `size`) for an unclaimed port.
    public func read(port: UInt16, size: Int) -> UInt32 {
        let mask: UInt32 = size >= 4 ? 0xFFFF_FFFF : (1 << (8 * UInt32(size))) - 1
        guard let d = device(at: port) else { return mask }
        return d.read(port: port, size: size) & mask
    }

    /// The MMIO device at `address`, if any.
    public func mmioDevice(at address: UInt64) -> (any MMIODevice)? {
        mmio.first { $0.range.contains(address) }?.device
    }
}
