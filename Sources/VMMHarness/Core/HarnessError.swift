#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Every error the harness reports. Each case names what failed and keeps the cause
/// (the errno and the call for system errors).
public enum HarnessError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed. `call` names it (for ioctls, the request name), `errno` is what it left.
    case system(call: String, errno: Errno)
    /// The KVM device (`BackendOptions.kvmDevicePath`, `/dev/kvm` by default) could not be used.
    case kvmUnavailable(path: String, errno: Errno)
    /// The KVM API version is not the stable 12.
    case kvmAPIVersion(Int32)
    /// A required KVM capability is missing.
    case kvmMissingCapability(String)
    /// A bad argument from the user or the caller.
    case invalidArgument(String)
    /// A file could not be read or is not what it claims to be.
    case badFile(path: String, reason: String)
    /// The assembler rejected a `.S` file; `output` is what it printed.
    case assemblyFailed(path: String, output: String)
    /// Something the guest handed to the host does not fit guest memory or the protocol.
    case guestProtocol(String)
    /// A guest memory access outside guest memory.
    case memory(MemoryAccessError)
    /// The backend cannot run what was asked of it.
    case unsupported(String)
    /// A soak run (`Harness.soak`) saw cycles of the same scenario end differently.
    case soak(String)

    public var description: String {
        switch self {
        case let .system(call, e):
            return "\(call) failed: \(e)"
        case let .kvmUnavailable(path, e):
            return "cannot open \(path): \(e)"
        case let .kvmAPIVersion(v):
            return "KVM API version \(v) is not the supported version 12"
        case let .kvmMissingCapability(c):
            return "KVM lacks the capability \(c)"
        case let .invalidArgument(s):
            return s
        case let .badFile(path, reason):
            return "\(path): \(reason)"
        case let .assemblyFailed(path, output):
            return "\(path): the assembler failed:\n\(output)"
        case let .guestProtocol(s):
            return "guest protocol error: \(s)"
        case let .memory(m):
            return m.description
        case let .unsupported(s):
            return "unsupported: \(s)"
        case let .soak(s):
            return "soak: \(s)"
        }
    }

    /// The symbolic name of an errno value (ENOENT, EACCES, ...), or "errno N".
    @available(*, deprecated, message: "use Errno(rawValue:).name")
    public static func errnoName(_ e: Int32) -> String { Errno(rawValue: e).name }
}
