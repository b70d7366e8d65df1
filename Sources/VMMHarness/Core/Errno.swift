#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A C `errno` value as a typed value: what a failed system call left, kept by
/// `HarnessError.system` and `HarnessError.kvmUnavailable`.
///
/// The constants carry Swift names; each doc comment gives the C name, which `name` returns.
public struct Errno: RawRepresentable, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The C value.
    public var rawValue: Int32

    /// Wraps a C errno value.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's `errno` now (read it right after the failing call).
    public static var current: Errno { Errno(rawValue: errno) }

    /// `EPERM`: operation not permitted.
    public static let notPermitted = Errno(rawValue: EPERM)
    /// `ENOENT`: no such file or directory.
    public static let noSuchFileOrDirectory = Errno(rawValue: ENOENT)
    /// `ESRCH`: no such process (or thread).
    public static let noSuchProcess = Errno(rawValue: ESRCH)
    /// `EINTR`: interrupted by a signal.
    public static let interrupted = Errno(rawValue: EINTR)
    /// `EIO`: input/output error.
    public static let ioError = Errno(rawValue: EIO)
    /// `ENXIO`: no such device or address.
    public static let noSuchDeviceOrAddress = Errno(rawValue: ENXIO)
    /// `EBADF`: bad file descriptor.
    public static let badFileDescriptor = Errno(rawValue: EBADF)
    /// `EAGAIN`: resource temporarily unavailable.
    public static let resourceTemporarilyUnavailable = Errno(rawValue: EAGAIN)
    /// `ENOMEM`: cannot allocate memory.
    public static let noMemory = Errno(rawValue: ENOMEM)
    /// `EACCES`: permission denied.
    public static let permissionDenied = Errno(rawValue: EACCES)
    /// `EFAULT`: bad address.
    public static let badAddress = Errno(rawValue: EFAULT)
    /// `EBUSY`: device or resource busy.
    public static let resourceBusy = Errno(rawValue: EBUSY)
    /// `EEXIST`: file exists.
    public static let fileExists = Errno(rawValue: EEXIST)
    /// `ENODEV`: no such device.
    public static let noSuchDevice = Errno(rawValue: ENODEV)
    /// `EINVAL`: invalid argument.
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// `EMFILE`: too many open files in this process.
    public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
    /// `ENOTTY`: inappropriate ioctl for device.
    public static let inappropriateIOCTLForDevice = Errno(rawValue: ENOTTY)
    /// `ENOSPC`: no space left on device.
    public static let noSpace = Errno(rawValue: ENOSPC)
    /// `ENOSYS`: function not implemented.
    public static let noFunction = Errno(rawValue: ENOSYS)
    /// `EOPNOTSUPP`: operation not supported.
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)

    /// The C name of every value with a constant above.
    private static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
        EBADF: "EBADF", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT",
        EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", EINVAL: "EINVAL", EMFILE: "EMFILE",
        ENOTTY: "ENOTTY", ENOSPC: "ENOSPC", ENOSYS: "ENOSYS", EOPNOTSUPP: "EOPNOTSUPP",
    ]

    /// The C name ("ENOENT"), or "errno N" for a value without a constant here.
    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }

    /// The C library's message for this value (`strerror`).
    public var message: String { String(cString: strerror(rawValue)) }

    /// The name and the message: "ENOENT (No such file or directory)".
    public var description: String { "\(name) (\(message))" }
}
