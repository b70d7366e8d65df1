/// A virtual device written in guest code: its Device Descriptor Block (the DDK's
/// `Declare_Virtual_Device`, 50h bytes) lies in the image under a symbol `NAME_DDB`, and its
/// control procedure is guest code that the VMM calls with EAX = message, EBX = VM handle
/// (CF set on return = failure).
public final class GuestDevice: VirtualDevice {
    /// The DDB's fields the VMM uses.
    public struct DDB: Sendable, Equatable {
        /// Guest address of the DDB.
        public var address: UInt32
        public var name: String
        public var deviceID: UInt16
        public var initOrder: UInt32
        public var controlProc: UInt32
        public var version: (major: UInt8, minor: UInt8)

        public static func == (a: DDB, b: DDB) -> Bool {
            a.address == b.address && a.name == b.name && a.deviceID == b.deviceID && a.initOrder == b.initOrder &&
                a.controlProc == b.controlProc && a.version == b.version
        }

        /// Size of a DDB.
        public static let size = 0x50

        /// Decodes the DDB at `address` (offsets of VMM.INC: 06h Req_Device_Number, 08h/09h
        /// version, 0Ch Name, 14h Init_Order, 18h Control_Proc).
        public static func read(at address: UInt32, memory: GuestMemory) throws(HarnessError) -> DDB {
            let b: [UInt8]
            do { b = try memory.readBytes(address, count: size) } catch {
                throw .guestProtocol("DDB at \(hex(address)) is outside guest memory")
            }
            func d(_ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
            let nameBytes = b[0x0C..<0x14]
            guard nameBytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                throw .guestProtocol("DDB at \(hex(address)): the name is not printable ASCII")
            }
            let name = String(decoding: nameBytes, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw .guestProtocol("DDB at \(hex(address)): empty name") }
            return DDB(address: address, name: name, deviceID: UInt16(b[6]) | UInt16(b[7]) << 8, initOrder: d(0x14),
                       controlProc: d(0x18), version: (b[8], b[9]))
        }
    }

    public let ddb: DDB
    public let codeRange: Range<UInt32>?

    public var name: String { ddb.name }
    public var deviceID: UInt16 { ddb.deviceID }
    public var initOrder: UInt32 { ddb.initOrder }

    public init(ddb: DDB, codeRange: Range<UInt32>?) {
        self.ddb = ddb
        self.codeRange = codeRange
    }

    /// Finds the guest devices of an image loaded in `memory`: every symbol `X_DDB` is a DDB. A
    /// device's code range, for the fatal-exception report, is `[X_code_begin, X_code_end)` when
    /// the image defines them (vmm.inc's `VxD_CODE_BEGIN`/`VxD_CODE_END`).
    public static func discover(symbols: [String: UInt32], memory: GuestMemory) throws(HarnessError) -> [GuestDevice] {
        var out: [GuestDevice] = []
        for (symbol, address) in symbols.sorted(by: { $0.value < $1.value }) where symbol.hasSuffix("_DDB") {
            let ddb = try DDB.read(at: address, memory: memory)
            let prefix = String(symbol.dropLast(4))
            var range: Range<UInt32>?
            if let a = symbols["\(prefix)_code_begin"], let b = symbols["\(prefix)_code_end"], a < b {
                range = a..<b
            }
            out.append(GuestDevice(ddb: ddb, codeRange: range))
        }
        return out
    }

    /// Sends `message` to the control procedure through the VMM's guest callout (the port the
    /// VMM was given to run guest code): EAX = message, EBX = VM handle; CF set on return = failure.
    public func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool {
        guard ddb.controlProc != 0 else { return true }
        guard let callout = vmm.guestCallout else { return false }
        do {
            let end = try callout.callGuestProcedure(ddb.controlProc, eax: UInt32(message.rawValue), ebx: vm,
                                                     purpose: "\(ddb.name)'s control procedure (\(message))")
            return end.eflags & EFlags.cf == 0
        } catch {
            callout.guestProcedureFailed("\(ddb.name): \(error)")
            return false
        }
    }
}
