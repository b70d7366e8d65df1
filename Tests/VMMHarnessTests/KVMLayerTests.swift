import CKVM
import Foundation
import Testing
@testable import VMMHarness

@Suite struct KVMStructLayoutTests {
    @Test func structSizesMatchKvmH() {
        #expect(MemoryLayout<kvm_regs>.size == 144)
        #expect(MemoryLayout<kvm_segment>.size == 24)
        #expect(MemoryLayout<kvm_dtable>.size == 16)
        #expect(MemoryLayout<kvm_sregs>.size == 312)
        #expect(MemoryLayout<kvm_userspace_memory_region>.size == 32)
        #expect(MemoryLayout<kvm_run>.offset(of: \kvm_run.exit_reason) == 8)
        #expect(MemoryLayout<kvm_run>.offset(of: \kvm_run.immediate_exit) == 1)
        #expect(MemoryLayout<kvm_run>.offset(of: \kvm_run.kvm_valid_regs) == 288)
    }

    @Test func requestConstantsAreTheKernelsNumbers() {
        // _IO(0xAE, 0x00), _IO(0xAE, 0x01), _IO(0xAE, 0x80), _IOW(0xAE, 0x46, struct kvm_userspace_memory_region)
        #expect(ckvm_KVM_GET_API_VERSION == 0xAE00)
        #expect(ckvm_KVM_CREATE_VM == 0xAE01)
        #expect(ckvm_KVM_RUN == 0xAE80)
        #expect(ckvm_KVM_SET_USER_MEMORY_REGION == 0x4020_AE46)
        #expect(ckvm_KVM_GET_REGS == 0x8090_AE81)
        #expect(ckvm_KVM_SET_SREGS == 0x4138_AE84)
    }
}

@Suite struct KVMExitDecodingTests {
    /// A zeroed, page-sized kvm_run to fill in by hand.
    final class FakeRun {
        let size = 4096
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        init() { raw.initializeMemory(as: UInt8.self, repeating: 0, count: size) }
        deinit { raw.deallocate() }
        var run: UnsafeMutablePointer<kvm_run> { raw.assumingMemoryBound(to: kvm_run.self) }
        func decode() -> GuestExit { KVMRunArea.decode(run: UnsafePointer(run), mappingSize: size) }
    }

    @Test func ioOutCarriesPortAndData() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = ckvm_KVM_EXIT_IO_OUT
        f.run.pointee.io.size = 1
        f.run.pointee.io.port = 0x86
        f.run.pointee.io.count = 1
        f.run.pointee.io.data_offset = 0x800
        f.raw.storeBytes(of: UInt8(0x5A), toByteOffset: 0x800, as: UInt8.self)
        #expect(f.decode() == .portOut(port: 0x86, size: 1, value: 0x5A))
    }

    @Test func ioWithDataOutsideTheMappingIsRejected() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = ckvm_KVM_EXIT_IO_OUT
        f.run.pointee.io.size = 4
        f.run.pointee.io.count = 1
        f.run.pointee.io.data_offset = 4094
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
    }

    /// Fills in a KVM_EXIT_IO.
    static func io(_ f: FakeRun, isIn: Bool, size: UInt8, count: UInt32, port: UInt16 = 0x1F0, at offset: UInt64 = 0x800) {
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = isIn ? ckvm_KVM_EXIT_IO_IN : ckvm_KVM_EXIT_IO_OUT
        f.run.pointee.io.size = size
        f.run.pointee.io.port = port
        f.run.pointee.io.count = count
        f.run.pointee.io.data_offset = offset
    }

    @Test func stringOutIsHandedOutElementByElement() {
        let f = FakeRun()
        Self.io(f, isIn: false, size: 2, count: 3)
        for (i, b) in [0x11, 0x10, 0x22, 0x20, 0x33, 0x30, 0x44, 0x40].enumerated() {
            f.raw.storeBytes(of: UInt8(b), toByteOffset: 0x800 + i, as: UInt8.self)
        }
        guard case let .io(io) = KVMRunArea.decodeExit(run: UnsafeRawPointer(f.raw), mappingSize: f.size) else {
            Issue.record("expected port I/O")
            return
        }
        #expect(io == KVMPortIO(isIn: false, port: 0x1F0, size: 2, count: 3, dataOffset: 0x800))
        let mapping = UnsafeRawBufferPointer(start: f.raw, count: f.size)
        var elements = PortIOElements(io)
        var exits = [elements.first(in: mapping)]
        while let e = elements.next(in: mapping) { exits.append(e) }
        #expect(exits == [0x1011, 0x2022, 0x3033].map { .portOut(port: 0x1F0, size: 2, value: $0) })
        // The public decoder (the fuzz target's entry) hands out the same.
        let raw = UnsafeRawBufferPointer(start: f.raw, count: f.size)
        #expect(KVMRunArea.exits(decodingKVMRun: raw) == exits)
    }

    @Test func stringInElementsAreStoredInOrder() {
        let f = FakeRun()
        Self.io(f, isIn: true, size: 4, count: 3, port: 0x60)
        guard case let .io(io) = KVMRunArea.decodeExit(run: UnsafeRawPointer(f.raw), mappingSize: f.size) else {
            Issue.record("expected port I/O")
            return
        }
        let mapping = UnsafeMutableRawBufferPointer(start: f.raw, count: f.size)
        var elements = PortIOElements(io)
        var exits = [elements.first(in: UnsafeRawBufferPointer(mapping))]
        // Unanswered: the same element again.
        #expect(elements.next(in: UnsafeRawBufferPointer(mapping)) == .portIn(port: 0x60, size: 4))
        var value: UInt32 = 0xA000_0001
        while true {
            let stored = elements.answer(value, in: mapping)
            #expect(stored)
            value += 1
            guard let e = elements.next(in: UnsafeRawBufferPointer(mapping)) else { break }
            exits.append(e)
        }
        #expect(exits == Array(repeating: .portIn(port: 0x60, size: 4), count: 3))
        #expect((0..<3).map { f.raw.load(fromByteOffset: 0x800 + 4 * $0, as: UInt32.self) } == [0xA000_0001, 0xA000_0002, 0xA000_0003])
        #expect(f.raw.load(fromByteOffset: 0x80C, as: UInt32.self) == 0)
    }

    @Test func stringIOMustFitTheMapping() {
        let f = FakeRun()
        // 0x100 elements of 4 bytes from 0xC04: 4 bytes too many for a 4096-byte mapping.
        Self.io(f, isIn: false, size: 4, count: 0xFF, at: 0xC04)
        #expect(f.decode() == .portOut(port: 0x1F0, size: 4, value: 0))
        Self.io(f, isIn: false, size: 4, count: 0x100, at: 0xC04)
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
        Self.io(f, isIn: true, size: 1, count: UInt32.max, at: 0)
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
        Self.io(f, isIn: true, size: 1, count: 1, at: UInt64.max)
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
        // KVM never reports zero elements, nor sizes other than 1, 2, 4, nor other directions.
        Self.io(f, isIn: true, size: 1, count: 0)
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
        Self.io(f, isIn: true, size: 3, count: 1)
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
        Self.io(f, isIn: true, size: 1, count: 1)
        f.run.pointee.io.direction = 7
        #expect(f.decode() == .unknown(reason: UInt32(KVM_EXIT_IO)))
    }

    @Test func debugExitsTellSingleStepsFromBreakpoints() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_DEBUG)
        f.run.pointee.debug.arch.pc = 0x0010_0004
        f.run.pointee.debug.arch.dr6 = 0xFFFF_0FF1   // B0: DR0 hit
        #expect(f.decode() == .breakpoint(address: 0x0010_0004))
        f.run.pointee.debug.arch.dr6 = 0xFFFF_4FF0   // BS
        #expect(f.decode() == .singleStep(address: 0x0010_0004))
    }

    @Test func shortOrEmptyInputsDecodeAsZeroFilled() {
        #expect(KVMRunArea.exits(decodingKVMRun: UnsafeRawBufferPointer(start: nil, count: 0)) == [.unknown(reason: 0)])
        let hlt: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, UInt8(KVM_EXIT_HLT), 0, 0, 0]
        #expect(hlt.withUnsafeBytes { KVMRunArea.exits(decodingKVMRun: $0) } == [.halt])
    }

    @Test func ioIn() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = ckvm_KVM_EXIT_IO_IN
        f.run.pointee.io.size = 2
        f.run.pointee.io.port = 0x60
        f.run.pointee.io.count = 1
        f.run.pointee.io.data_offset = 0x800
        #expect(f.decode() == .portIn(port: 0x60, size: 2))
    }

    @Test func simpleExits() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
        #expect(f.decode() == .halt)
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_SHUTDOWN)
        if case .shutdown = f.decode() {} else { Issue.record("expected shutdown") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_FAIL_ENTRY)
        f.run.pointee.fail_entry.hardware_entry_failure_reason = 0x21
        #expect(f.decode() == .failEntry(reason: 0x21))
        f.run.pointee.exit_reason = 999
        #expect(f.decode() == .unknown(reason: 999))
    }

    @Test func mmio() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
        f.run.pointee.mmio.phys_addr = 0xFFFF_FFFC
        f.run.pointee.mmio.len = 4
        f.run.pointee.mmio.is_write = 0
        #expect(f.decode() == .mmio(address: 0xFFFF_FFFC, isWrite: false, length: 4, data: 0))
    }

    @Test func emulationFailureCarriesInstructionBytes() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
        f.run.pointee.internal.suberror = ckvm_KVM_INTERNAL_ERROR_EMULATION
        f.run.pointee.internal.ndata = 4
        withUnsafeMutableBytes(of: &f.run.pointee.internal.data) { b in
            b.storeBytes(of: UInt64(ckvm_KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES), toByteOffset: 0, as: UInt64.self)
            b[8] = 2        // insn_size
            b[9] = 0xCD     // INT 30h
            b[10] = 0x30
        }
        guard case let .internalError(sub, data, bytes) = f.decode() else {
            Issue.record("expected an internal error")
            return
        }
        #expect(sub == 1 && data.count == 4 && bytes == [0xCD, 0x30])
    }

    @Test func internalErrorWithoutBytes() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
        f.run.pointee.internal.suberror = 3
        f.run.pointee.internal.ndata = 40   // lies: more than the 16 slots
        guard case let .internalError(sub, data, bytes) = f.decode() else {
            Issue.record("expected an internal error")
            return
        }
        #expect(sub == 3 && data.count == 16 && bytes.isEmpty)
    }
}

@Suite(.enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens"))
struct KVMDeviceTests {
    @Test func opensAndReportsCapabilities() throws {
        let sys = try KVMSystem(path: TestSupport.backendOptions.kvmDevicePath)
        #expect(sys.hasImmediateExit)
        #expect(try sys.vcpuMmapSize() >= MemoryLayout<kvm_run>.size)
    }

    @Test func missingDeviceGetsItsOwnMessage() {
        #expect(throws: HarnessError.kvmUnavailable(path: "/nonexistent/kvm", errno: .noSuchFileOrDirectory)) {
            try KVMSystem(path: "/nonexistent/kvm")
        }
        let text = KVMDiagnosis.explain(.kvmUnavailable(path: "/dev/kvm", errno: .permissionDenied))
        #expect(text.contains("permission denied"))
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/dev/kvm", errno: .noSuchDevice)).contains("ENODEV"))
    }
}

/// The instruction assist: what KVM's emulator refuses (INT n on PVM hosts) runs in the
/// interpreter, and when the INT lands in one of the runtime's stubs the stub runs there too, up
/// to its OUT, instead of costing another KVM run.
struct InstructionAssistTests {
    /// `INT 30h` at the image base over fresh memory holding the runtime.
    static func intState() throws -> (CPUState, GuestMemory) {
        let memory = try GuestMemory(size: 2 << 20)
        try memory.writeBytes(MemoryMap.runtimeBase, RuntimeImage.bytes)
        try memory.writeBytes(MemoryMap.imageBase, [0xCD, 0x30, 0xF4])   // int 30h; hlt
        return (Machine.initialState(entry: MemoryMap.imageBase, layout: try RuntimeImage.layout()), memory)
    }

    @Test func intIntoARuntimeStubRunsTheStubToItsOut() throws {
        var (state, memory) = try Self.intState()
        state.eax = 0x1111_2222
        let esp = state.esp
        let outcome = InterpreterAssist().assist(state: &state, memory: memory)
        #expect(outcome == .exit(.portOut(port: Ports.faultBase + 0x30, size: 1, value: state.eax & 0xFF)))
        // The stub's frame is complete: EIP/CS/EFLAGS from the INT, the dummy error code, PUSHAD.
        let frameAt = state.esp
        #expect(esp &- frameAt == UInt32(ClientRegisters.stubFrameSize))
        var frame = ClientRegisters()
        try frame.load(from: memory, at: frameAt, count: ClientRegisters.stubFrameSize)
        #expect(frame.eip == MemoryMap.imageBase + 2)   // INT n is a trap: after the instruction
        #expect(frame.cs == Selectors.ring0Code)
        #expect(frame.error == 0)
        #expect(frame.eax == 0x1111_2222)
    }

    /// On KVM: one run to the INT (refused on PVM hosts, native elsewhere), the host's handler,
    /// one run to the HLT. Without the stub in the assist a PVM host needed a third run.
    @Test(.enabled(if: TestSupport.kvmUsable, "KVM not usable: \(TestSupport.kvmSkipReason)"))
    func intReachesTheHostInOneKVMRun() throws {
        var options = MachineOptions()
        options.memorySize = 2 << 20
        let handling = ClosureFaultHandling { event, frame in
            guard event.vector == 0x30 else { return false }
            frame.eax = 0x1234
            return true
        }
        let machine = try Harness.makeMachine(image: GuestImage(name: "int30", bytes: [0xCD, 0x30, 0xF4]), choice: .kvm,
                                              options: options, faultHandling: handling)
        let report = machine.run()
        #expect(report.exit.reason == .halt)
        #expect(report.finalRegisters?.eax == 0x1234)
        #expect(report.faults.map(\.vector) == [0x30])
        #expect(report.statistics.backendRuns == 2)
        #expect(report.statistics.assists <= 1)
    }

    @Test func anInstructionOutsideTheStubsCompletesAlone() throws {
        var (state, memory) = try Self.intState()
        // A guest IDT entry for 30h that points at a HLT in the image, not at a stub: the assist
        // runs INT only and hands the rest back.
        let layout = try RuntimeImage.layout()
        let target = MemoryMap.imageBase + 2
        let gate = UInt64(target & 0xFFFF) | UInt64(Selectors.ring0Code) << 16 | UInt64(0x8E00) << 32
            | UInt64(target >> 16) << 48
        try memory.write64(layout.idt.base + 0x30 * 8, gate)
        let outcome = InterpreterAssist().assist(state: &state, memory: memory)
        #expect(outcome == .completed)
        #expect(state.eip == target)
    }
}

@Suite struct ErrnoTests {
    @Test func namesAndMessages() {
        #expect(Errno.noSuchFileOrDirectory.name == "ENOENT")
        #expect(Errno.permissionDenied.name == "EACCES")
        #expect(Errno.interrupted.name == "EINTR")
        #expect(Errno.inappropriateIOCTLForDevice.name == "ENOTTY")
        #expect(Errno(rawValue: ENODEV) == .noSuchDevice)
        #expect(Errno(rawValue: 4095).name == "errno 4095")
        #expect(Errno.noSuchFileOrDirectory.description == "ENOENT (No such file or directory)")
        #expect(HarnessError.system(call: "ioctl(KVM_RUN)", errno: .badAddress).description == "ioctl(KVM_RUN) failed: EFAULT (Bad address)")
        #expect(HarnessError.kvmUnavailable(path: "/x", errno: .noSuchFileOrDirectory).description
            == "cannot open /x: ENOENT (No such file or directory)")
    }

    @Test func diagnosisComparesErrnoValues() {
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/k", errno: .noSuchFileOrDirectory)).contains("does not exist (ENOENT)"))
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/k", errno: .notPermitted)).contains("permission denied (EPERM)"))
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/k", errno: .noSuchDeviceOrAddress)).contains("no such device (ENXIO)"))
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/k", errno: .resourceBusy)).contains("busy (EBUSY)"))
        #expect(KVMDiagnosis.explain(.kvmUnavailable(path: "/k", errno: .ioError)) == "cannot open /k: EIO (Input/output error)")
    }

    @Test func aMissingDeviceIsReportedWithItsErrnoWithoutKVM() {
        // Needs no KVM: opening a path that does not exist fails the same everywhere.
        #expect(throws: HarnessError.kvmUnavailable(path: "/nonexistent/kvm", errno: .noSuchFileOrDirectory)) {
            try KVMSystem(path: "/nonexistent/kvm")
        }
        let host = HostDescription.current(devicePath: "/nonexistent/kvm")
        #expect(!host.kvmUsable && host.kvmDevice == "/nonexistent/kvm")
        #expect(host.kvmError?.contains("ENOENT") == true)
    }
}
