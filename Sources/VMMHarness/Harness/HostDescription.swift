import Foundation

/// What kind of KVM host this is. The project's own machines run the PVM flavour of KVM, whose
/// instruction emulator cannot run protected-mode IRET, INT n, 32-bit paging or V86 mode.
public struct HostDescription: Sendable, Codable, Equatable {
    /// "pvm" (kvm_pvm loaded), "vmx" (kvm_intel), "svm" (kvm_amd), or "unknown".
    public var kvmFlavour: String
    /// The KVM device path the harness would use.
    public var kvmDevice: String
    /// Whether that device opened (and its API version is 12).
    public var kvmUsable: Bool
    /// Why not, when it did not.
    public var kvmError: String?
    /// CPU model name.
    public var cpu: String
    /// Kernel release.
    public var kernel: String

    /// Describes the current host. Opens the KVM device at `devicePath` once to see if it is
    /// usable (callers pass `BackendOptions.kvmDevicePath`; the library reads no environment).
    public static func current(devicePath: String = "/dev/kvm") -> HostDescription {
        let modules = (try? String(contentsOfFile: "/proc/modules", encoding: .utf8)) ?? ""
        func loaded(_ m: String) -> Bool {
            modules.split(separator: "\n").contains { $0.hasPrefix(m + " ") } || FileManager.default.fileExists(atPath: "/sys/module/\(m)")
        }
        let flavour = loaded("kvm_pvm") ? "pvm" : loaded("kvm_intel") ? "vmx" : loaded("kvm_amd") ? "svm" : "unknown"
        var usable = false
        var err: String?
        do {
            _ = try Backends.openKVMDevice(path: devicePath)
            usable = true
        } catch {
            err = KVMDiagnosis.explain(error)
        }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown"
        let kernel = ((try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "unknown")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return HostDescription(kvmFlavour: flavour, kvmDevice: devicePath, kvmUsable: usable, kvmError: err, cpu: model, kernel: kernel)
    }
}

/// Turns KVM open failures into one line of advice each.
public enum KVMDiagnosis {
    public static func explain(_ error: HarnessError) -> String {
        if case let .kvmUnavailable(path, e) = error {
            switch e {
            case .noSuchFileOrDirectory:
                return "\(path) does not exist (ENOENT): the kvm module is not loaded or virtualization is off; load kvm_intel/kvm_amd or use --backend interpreter"
            case .permissionDenied, .notPermitted:
                return "\(path): permission denied (\(e.name)): add yourself to the group that owns it (often 'kvm') or run as root; --backend interpreter works without it"
            case .noSuchDevice, .noSuchDeviceOrAddress:
                return "\(path): no such device (\(e.name)): the CPU or hypervisor offers no virtualization; use --backend interpreter"
            case .resourceBusy:
                return "\(path): busy (EBUSY): another hypervisor holds the virtualization extensions"
            default:
                return error.description
            }
        }
        return error.description
    }
}
