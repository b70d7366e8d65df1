import Testing
@testable import VMMHarness

// MARK: - Test support (shared by the VMM*Tests files)

/// A device whose control procedure runs a closure and records what it got.
final class TestDevice: VirtualDevice {
    let name: String
    let deviceID: UInt16
    let initOrder: UInt32
    var codeRange: Range<UInt32>?
    var onControl: (ControlMessage, VirtualMachineManager) -> Bool
    var received: [ControlMessage] = []
    var interruptsSeen: [ControlMessage: Bool] = [:]

    init(_ name: String, id: UInt16 = 0, order: UInt32 = 0x1000, codeRange: Range<UInt32>? = nil,
         onControl: @escaping (ControlMessage, VirtualMachineManager) -> Bool = { _, _ in true }) {
        self.name = name; deviceID = id; initOrder = order; self.codeRange = codeRange; self.onControl = onControl
    }

    func control(message: ControlMessage, vm: VMHandle, vmm: VirtualMachineManager) -> Bool {
        received.append(message)
        interruptsSeen[message] = vmm.interruptsEnabled
        return onControl(message, vmm)
    }
}

/// Guest memory as a dictionary; missing bytes fault.
final class DictionaryMemory: GuestStringReader {
    var bytes: [UInt32: UInt8] = [:]
    func put(_ s: String, at address: UInt32) {
        for (i, b) in (Array(s.utf8) + [0]).enumerated() { bytes[address + UInt32(i)] = b }
    }
    func readGuestByte(_ address: UInt32) throws(MemoryAccessError) -> UInt8 {
        guard let b = bytes[address] else { throw MemoryAccessError(address: UInt64(address), length: 1, isWrite: false) }
        return b
    }
}

/// A guest callout that plays a scripted guest handler.
final class MockCallout: GuestFaultCallout {
    var calls: [GuestFaultHandlerCall] = []
    var relinks: [(FaultHandlerAddress, UInt8, FaultHandlerAddress?)] = []
    var behaviour: (GuestFaultHandlerCall, inout ClientRegisters) -> GuestFaultHandlerReturn = { call, _ in
        GuestFaultHandlerReturn(disposition: .passedOn, registers: call.registers)
    }
    func callGuestFaultHandler(_ call: GuestFaultHandlerCall, frame: inout ClientRegisters) throws(HarnessError)
        -> GuestFaultHandlerReturn
    {
        calls.append(call)
        return behaviour(call, &frame)
    }
    func guestHookRelinked(handler: FaultHandlerAddress, vector: UInt8, newPrevious: FaultHandlerAddress?) {
        relinks.append((handler, vector, newPrevious))
    }
}

var passOn: FaultProc { { _, _, _ in .passedOn } }
var process: FaultProc { { _, _, _ in .processed } }

/// A ring-0 #GP frame as the stub leaves it.
func sampleFrame(eip: UInt32 = 0x0010_0005) -> ClientRegisters {
    var f = ClientRegisters()
    f.eax = 0x1111_1111; f.ebx = 0x2222_2222; f.ecx = 0x3333_3333; f.edx = 0x4444_4444
    f.esi = 0x5555_5555; f.edi = 0x6666_6666; f.ebp = 0x0007_FF00
    f.error = 0x0000; f.eip = eip; f.cs = Selectors.ring0Code; f.eflags = 0x0000_0202
    f.ds = Selectors.ring0Data; f.es = Selectors.ring0Data; f.fs = Selectors.ring0Data; f.gs = Selectors.ring0Data
    f.ss = Selectors.ring0Data; f.esp = 0x0007_FF80
    return f
}

func sampleEntryRegisters() -> HandlerRegisters {
    var r = HandlerRegisters()
    r.eax = 0xA; r.ebx = 0xB; r.ecx = 0xC; r.edx = 0xD; r.esi = 0x51; r.edi = 0xD1
    r.ebp = 0x1234; r.esp = 0x0007_FE00; r.eflags = 0x0000_0246
    return r
}

let frameAddress: UInt32 = 0x0007_FF00

// MARK: - Hook_VMM_Fault / Unhook_VMM_Fault

@Suite struct VMMHookTests {
    @Test(arguments: [UInt32(0x00), 0x01, 0x03, 0x0D, 0x4F])
    func acceptsValidNumbersThroughBothFaces(_ n: UInt32) throws {
        let vmm = VirtualMachineManager()
        let first = try vmm.hookVMMFault(n, name: "A", handler: passOn)
        #expect(first == nil)
        var r = ServiceRegisters(eax: n, esi: 0x0010_0040, eflags: 0x2 | EFlags.cf)
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.hookVMMFault), registers: &r)
        #expect(!r.carry)
        #expect(r.esi == VMMHostArea.handlerBase)  // A's address: slot 0
        #expect(vmm.faultChain(UInt8(n)).map(\.name) == ["guest handler", "A"])
    }

    @Test(arguments: [UInt32(0x02), 0x50, 0x5F, 0xFF, 0x100, 0x0001_0006, 0x8000_000D, 0xFFFF_FFFF])
    func refusesInvalidNumbersAndInstallsNothing(_ n: UInt32) throws {
        let vmm = VirtualMachineManager()
        try vmm.hookVMMFault(0x0D, name: "existing", handler: passOn)
        try vmm.hookVMMFault(0x06, name: "existing", handler: passOn)
        let chainsBefore = (0...0xFF).map { vmm.faultChain(UInt8($0)) }
        #expect(throws: FaultHookError.invalidFaultNumber(n)) {
            try vmm.hookVMMFault(n, name: "X", handler: passOn)
        }
        var r = ServiceRegisters(eax: n, ebx: 7, ecx: 8, edx: 9, esi: 0x0010_0040, edi: 10, ebp: 11)
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.hookVMMFault), registers: &r)
        #expect(r.carry)
        #expect(r.esi == 0x0010_0040 && r.eax == n && r.ebx == 7 && r.edi == 10)
        #expect((0...0xFF).map { vmm.faultChain(UInt8($0)) } == chainsBefore)
    }

    @Test func previousHandlerIsReturnedWhateverItsKind() throws {
        let vmm = VirtualMachineManager()
        #expect(try vmm.hookVMMFault(0x0D, name: "A", handler: passOn) == nil)
        let a = vmm.faultChain(0x0D)[0].address
        #expect(a.rawValue == MemoryMap.hostAreaBase)
        // Guest handler through the register face: previous = A's host-area address.
        var r = ServiceRegisters(eax: 0x0D, esi: 0x0010_0040)
        _ = try vmm.callService(vmmcallOperand: 0x0001_0081, registers: &r)
        #expect(!r.carry && r.esi == a.rawValue)
        // Swift handler: previous = the guest handler's address.
        #expect(try vmm.hookVMMFault(0x0D, name: "C", handler: passOn) == FaultHandlerAddress(0x0010_0040))
        // Register face again: ESI = C's host-area address (slot 1).
        r = ServiceRegisters(eax: 0x0D, esi: 0x0010_0080)
        _ = try vmm.callService(vmmcallOperand: 0x0001_0081, registers: &r)
        #expect(r.esi == MemoryMap.hostAreaBase + 16)
        #expect(vmm.faultChain(0x0D).map(\.previous) ==
            [FaultHandlerAddress(MemoryMap.hostAreaBase + 16), FaultHandlerAddress(0x0010_0040), a, nil])
    }

    @Test func registerFacePreservesOtherRegisters() throws {
        let vmm = VirtualMachineManager()
        let before = ServiceRegisters(eax: 0x0E, ebx: 1, ecx: 2, edx: 3, esi: 0x0010_0000, edi: 4, ebp: 5, esp: 6,
                                      eflags: 0x2 | EFlags.zf)
        var r = before
        _ = try vmm.callService(VMMServiceID(ordinal: 0x81), registers: &r)
        var expected = before
        expected.esi = 0
        #expect(r == expected)
    }

    @Test func nullHandlerIsRefused() {
        let vmm = VirtualMachineManager()
        #expect(throws: FaultHookError.nullHandler) { try vmm.hookVMMFault(0x0D, handlerAt: FaultHandlerAddress(0)) }
        #expect(vmm.faultChain(0x0D).isEmpty)
    }

    @Test func unhookRelinksTheNewerHook() throws {
        let vmm = VirtualMachineManager()
        var order: [String] = []
        for n in ["A", "B", "C"] {
            try vmm.hookVMMFault(0x0D, name: n) { _, _, _ in order.append(n); return .passedOn }
        }
        let chain = vmm.faultChain(0x0D)
        let (c, b, a) = (chain[0], chain[1], chain[2])
        try vmm.unhookVMMFault(0x0D, handlerAt: b.address)
        let after = vmm.faultChain(0x0D)
        #expect(after.map(\.name) == ["C", "A"])
        #expect(after[0].previous == a.address && after[0].address == c.address)
        var frame = sampleFrame()
        _ = try vmm.dispatchFault(vector: 0x0D, frame: &frame, frameAddress: frameAddress,
                                  entryRegisters: sampleEntryRegisters())
        #expect(order == ["C", "A"])
        // Not found: carry set, through both faces.
        #expect(throws: FaultHookError.notHooked(interrupt: 0x0D, handler: b.address)) {
            try vmm.unhookVMMFault(0x0D, handlerAt: b.address)
        }
        var r = ServiceRegisters(eax: 0x0E, esi: a.address.rawValue)
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.unhookVMMFault), registers: &r)
        #expect(r.carry)
        // Unhooking the head.
        r = ServiceRegisters(eax: 0x0D, esi: c.address.rawValue)
        _ = try vmm.callService(VMMServiceID(ordinal: VMMServiceOrdinal.unhookVMMFault), registers: &r)
        #expect(!r.carry)
        #expect(vmm.faultChain(0x0D).map(\.name) == ["A"])
    }

    @Test func unhookTellsTheCalloutWhenAGuestHookIsRelinked() throws {
        let vmm = VirtualMachineManager()
        let callout = MockCallout()
        vmm.guestCallout = callout
        try vmm.hookVMMFault(0x0E, name: "A", handler: passOn)
        let a = vmm.faultChain(0x0E)[0].address
        let b = try vmm.registerFaultHandler(name: "B", handler: passOn)
        #expect(try vmm.hookVMMFault(0x0E, handlerAt: b) == a)
        #expect(try vmm.hookVMMFault(0x0E, handlerAt: FaultHandlerAddress(0x0010_2000)) == b)
        try vmm.unhookVMMFault(0x0E, handlerAt: b)
        #expect(callout.relinks.count == 1)
        #expect(callout.relinks.first?.0 == FaultHandlerAddress(0x0010_2000))
        #expect(callout.relinks.first?.2 == a)
    }
}
