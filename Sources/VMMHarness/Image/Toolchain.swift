import Foundation

/// The LLVM tools of the Swift toolchain that assemble guest code (clang, ld.lld, llvm-objcopy,
/// llvm-nm). Found next to `swift` on PATH, in /opt/swift/usr/bin, or in the folder named by
/// the environment variable `VMM_HARNESS_TOOLCHAIN`.
public struct Toolchain: Sendable {
    public var clang: String
    public var lld: String
    public var objcopy: String
    public var nm: String

    /// Locates the tools, or explains which one is missing.
    public static func find(environment: [String: String] = ProcessInfo.processInfo.environment) throws(HarnessError) -> Toolchain {
        var dirs: [String] = []
        if let d = environment["VMM_HARNESS_TOOLCHAIN"], !d.isEmpty { dirs.append(d) }
        for p in (environment["PATH"] ?? "").split(separator: ":") where !p.isEmpty {
            if FileManager.default.isExecutableFile(atPath: "\(p)/swift") { dirs.append(String(p)) }
        }
        dirs.append("/opt/swift/usr/bin")
        dirs.append("/usr/bin")
        for d in dirs {
            let t = Toolchain(clang: "\(d)/clang", lld: "\(d)/ld.lld", objcopy: "\(d)/llvm-objcopy", nm: "\(d)/llvm-nm")
            if [t.clang, t.lld, t.objcopy, t.nm].allSatisfy({ FileManager.default.isExecutableFile(atPath: $0) }) {
                return t
            }
        }
        throw .unsupported("no clang/ld.lld/llvm-objcopy/llvm-nm found next to swift, in /opt/swift/usr/bin or in VMM_HARNESS_TOOLCHAIN")
    }
}

/// Runs a program and captures its output (stdout and stderr together).
struct Subprocess {
    static func run(_ path: String, _ args: [String]) throws(HarnessError) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch {
            throw .system(call: "posix_spawn(\(path))", errno: Errno(rawValue: Int32((error as NSError).code)))
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
