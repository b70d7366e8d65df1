// The KVM layer: the only Swift folder that imports CKVM. One owning type per file descriptor
// (KVMSystem for /dev/kvm, KVMVirtualMachine for the VM, KVMVCPU for a vCPU) and one for the
// mapped kvm_run (KVMRunArea). Each closes/unmaps what it owns in deinit.
import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// Calls a wrapper that returns -1/errno and turns a failure into `HarnessError.system` naming the call.
@inline(__always)
func kvmCheck(_ name: @autoclosure () -> String, _ result: Int32) throws(HarnessError) -> Int32 {
    if result < 0 { throw .system(call: name(), errno: Errno(rawValue: ckvm_errno())) }
    return result
}

/// An open `/dev/kvm` (the DDK has no counterpart; rust-vmm calls it `Kvm`).
public final class KVMSystem: @unchecked Sendable {
    /// The device path it was opened with.
    public let path: String
    let fd: Int32

    /// Opens the device at `path` (callers pass `BackendOptions.kvmDevicePath`; the library
    /// reads no environment variable) and checks the API version. Errors keep the errno: ENOENT
    /// (missing), EACCES (permission), ENODEV/ENXIO (no virtualization support) are told apart
    /// by `KVMDiagnosis`.
    public init(path: String = "/dev/kvm") throws(HarnessError) {
        self.path = path
        let fd = ckvm_open(path, ckvm_O_RDWR_CLOEXEC)
        guard fd >= 0 else { throw .kvmUnavailable(path: path, errno: Errno(rawValue: ckvm_errno())) }
        self.fd = fd
        let v = ckvm_ioctl_none(fd, ckvm_KVM_GET_API_VERSION)
        guard v >= 0 else {
            let e = Errno(rawValue: ckvm_errno())
            ckvm_close(fd)
            throw .kvmUnavailable(path: path, errno: e)
        }
        guard v == 12 else {
            ckvm_close(fd)
            throw .kvmAPIVersion(v)
        }
    }

    deinit { ckvm_close(fd) }

    /// `KVM_CHECK_EXTENSION`: 0 when absent, otherwise the capability's value. (The ioctl only
    /// fails on a bad descriptor or request, which this type rules out; a failure reads as 0.)
    public func checkExtension(_ capability: Int32) -> Int32 {
        max(0, ckvm_ioctl_int(fd, ckvm_KVM_CHECK_EXTENSION, UInt(capability)))
    }

    /// Capabilities the harness uses, by name.
    public var syncRegisterSets: UInt32 { UInt32(checkExtension(ckvm_KVM_CAP_SYNC_REGS)) }
    public var hasImmediateExit: Bool { checkExtension(ckvm_KVM_CAP_IMMEDIATE_EXIT) > 0 }
    public var hasUserNMI: Bool { checkExtension(ckvm_KVM_CAP_USER_NMI) > 0 }

    /// `KVM_GET_VCPU_MMAP_SIZE`.
    public func vcpuMmapSize() throws(HarnessError) -> Int {
        Int(try kvmCheck("ioctl(KVM_GET_VCPU_MMAP_SIZE)", ckvm_ioctl_none(fd, ckvm_KVM_GET_VCPU_MMAP_SIZE)))
    }

    /// `KVM_CREATE_VM`.
    public func createVM() throws(HarnessError) -> KVMVirtualMachine {
        let vmfd = try kvmCheck("ioctl(KVM_CREATE_VM)", ckvm_ioctl_int(fd, ckvm_KVM_CREATE_VM, 0))
        return KVMVirtualMachine(system: self, fd: vmfd)
    }
}

/// A KVM virtual machine file descriptor (rust-vmm's `VmFd`).
public final class KVMVirtualMachine: @unchecked Sendable {
    public let system: KVMSystem
    let fd: Int32
    private var memory: [GuestMemory] = []

    init(system: KVMSystem, fd: Int32) {
        self.system = system
        self.fd = fd
    }

    deinit { ckvm_close(fd) }

    /// `KVM_SET_USER_MEMORY_REGION`: maps `memory` at guest-physical `guestPhysical` in `slot`.
    /// The VM keeps `memory` alive for as long as it exists.
    public func mapMemory(_ memory: GuestMemory, slot: UInt32 = 0, at guestPhysical: UInt64 = 0) throws(HarnessError) {
        var region = kvm_userspace_memory_region(slot: slot, flags: 0, guest_phys_addr: guestPhysical,
                                                 memory_size: UInt64(memory.size),
                                                 userspace_addr: UInt64(UInt(bitPattern: memory.base)))
        _ = try kvmCheck("ioctl(KVM_SET_USER_MEMORY_REGION)", ckvm_ioctl_ptr(fd, ckvm_KVM_SET_USER_MEMORY_REGION, &region))
        self.memory.append(memory)
    }

    /// `KVM_CREATE_VCPU` plus the mapping of its `kvm_run`. `syncRegisters` asks for registers
    /// through kvm_run's sync area (used when the host offers regs and sregs there); `kickSignal`
    /// is the signal its kicker sends (its handler is installed while the vCPU exists). A
    /// failure part way closes and unmaps what was made.
    public func createVCPU(id: UInt32 = 0, syncRegisters: Bool = true, kickSignal: Int32 = SIGUSR2) throws(HarnessError) -> KVMVCPU {
        let size = try system.vcpuMmapSize()
        let cfd = try kvmCheck("ioctl(KVM_CREATE_VCPU)", ckvm_ioctl_int(fd, ckvm_KVM_CREATE_VCPU, UInt(id)))
        guard let p = ckvm_mmap_shared(cfd, size) else {
            let e = Errno(rawValue: ckvm_errno())
            ckvm_close(cfd)
            throw .system(call: "mmap(vcpu kvm_run)", errno: e)
        }
        let area: KVMRunArea
        do {
            area = try KVMRunArea(pointer: p, size: size)   // unmaps `p` itself when it throws
            try KickSignalHandler.acquire(kickSignal)
        } catch {
            ckvm_close(cfd)
            throw error
        }
        return KVMVCPU(vm: self, fd: cfd, run: area, syncSets: syncRegisters ? system.syncRegisterSets : 0,
                       kickSignal: kickSignal)
    }
}
