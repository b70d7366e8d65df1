import Foundation
import Testing
@testable import VMMHarness

/// Where the built `vmm-harness` binary is, if it is built.
enum CLIBinary {
    static let path: String? = {
        // VMM_HARNESS_BINARY names it explicitly (e.g. for --scratch-path builds); otherwise the
        // tests run from the build folder that also holds the executable.
        if let p = ProcessInfo.processInfo.environment["VMM_HARNESS_BINARY"], FileManager.default.isExecutableFile(atPath: p) {
            return p
        }
        let dir = Bundle.main.bundleURL.deletingLastPathComponent().path
        for candidate in ["\(dir)/vmm-harness", "\(TestSupport.root)/.build/debug/vmm-harness"]
            where FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        return nil
    }()

    /// Runs the binary with `args` (and `env` over this process's environment) and returns its
    /// exit status, standard output and standard error.
    static func run(_ args: [String], env: [String: String] = [:]) throws -> (status: Int32, out: Data, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try #require(path))
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, o, String(decoding: e, as: UTF8.self))
    }
}

/// The built `vmm-harness` binary: its output and exit codes.
@Suite(.enabled(if: CLIBinary.path != nil, "the vmm-harness binary is not built next to the tests"))
struct CLITests {

    func run(_ args: [String], env: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
        let r = try CLIBinary.run(args, env: env)
        return (r.status, String(decoding: r.out, as: UTF8.self), r.err)
    }

    @Test func missingFileIsOneLineAndExitCode1() throws {
        let r = try run(["run", "/nonexistent/guest.S"])
        #expect(r.status == 1)
        #expect(r.err == "vmm-harness: /nonexistent/guest.S: no such file\n")
    }

    @Test func emptyFileIsRejected() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("empty-\(UUID()).bin").path
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try run(["run", path])
        #expect(r.status == 1 && r.err.contains("is empty"))
    }

    @Test func sourceThatDoesNotAssembleShowsTheAssembler() throws {
        guard TestSupport.toolchain != nil else { try Test.cancel("needs the toolchain's clang") }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID()).S").path
        try "    .globl _start\n_start:\n    movl %nosuchreg, %eax\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try run(["run", path])
        #expect(r.status == 1)
        #expect(r.err.contains("the assembler failed") && r.err.contains(path) && r.err.contains("nosuchreg"))
    }

    @Test func badBackendNameIsAUsageError() throws {
        let r = try run(["run", "--backend", "qemu", "x.S"])
        #expect(r.status != 0 && r.err.contains("qemu"))
    }

    @Test func jsonReportOfAnUnhandledFaultOnTheInterpreter() throws {
        guard TestSupport.toolchain != nil else { try Test.cancel("needs the toolchain's clang") }
        let r = try run(["run", "--backend", "interpreter", "--json", "\(TestSupport.root)/guest/scenarios/gp.S"])
        #expect(r.status == 3)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        let exit = try #require(json["exit"] as? [String: Any])
        #expect(exit["reason"] as? String == "unhandledFault")
        #expect((exit["message"] as? String)?.hasPrefix("A fatal exception 0D has occurred at 0028:") == true)
        let backend = try #require(json["backend"] as? [String: Any])
        #expect(backend["kind"] as? String == "interpreter")
        let faults = try #require(json["faults"] as? [[String: Any]])
        #expect(faults.first?["vector"] as? Int == 0x0D && faults.first?["errorCode"] as? Int == 0x1234)
    }

    @Test func autoFallsBackToTheInterpreterWithoutKVMAndSaysWhy() throws {
        guard TestSupport.toolchain != nil else { try Test.cancel("needs the toolchain's clang") }
        let r = try run(["run", "--trace", "\(TestSupport.root)/guest/scenarios/tiers.S"],
                        env: ["VMM_HARNESS_KVM_DEVICE": "/nonexistent/kvm"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("on interpreter — auto: /nonexistent/kvm does not exist (ENOENT)"))
        // The trace lists the three tiers in the DDK's order.
        let lines = r.out.split(separator: "\n").map(String.init)
        let late = lines.firstIndex { $0.contains("LATEOBS") && $0.contains("post-critical-init") }
        let vmm = lines.firstIndex { $0.contains("VMM [vmm") }
        let crit = lines.firstIndex { $0.contains("CRITFIX") && $0.contains("critical-init") && $0.contains("processed") }
        #expect(late != nil && vmm != nil && crit != nil)
        if let late, let vmm, let crit { #expect(late < vmm && vmm < crit) }
    }

    @Test func aBackendVariableThatNamesNoBackendIsAUsageError() throws {
        let r = try run(["run", "\(TestSupport.root)/guest/scenarios/ud.S"], env: ["VMM_HARNESS_BACKEND": "bogus"])
        #expect(r.status == 64)
        #expect(r.err.contains("VMM_HARNESS_BACKEND=bogus"))
    }

    @Test func environmentVariableForcesTheInterpreter() throws {
        guard TestSupport.toolchain != nil else { try Test.cancel("needs the toolchain's clang") }
        let r = try run(["run", "--json", "\(TestSupport.root)/guest/scenarios/ud.S"], env: ["VMM_HARNESS_BACKEND": "interpreter"])
        #expect(r.status == 3)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        let backend = try #require(json["backend"] as? [String: Any])
        #expect(backend["kind"] as? String == "interpreter")
        #expect(backend["reason"] as? String == "VMM_HARNESS_BACKEND=interpreter")
    }

    @Test func probeNeverCrashesWithoutADevice() throws {
        let r = try run(["probe"], env: ["VMM_HARNESS_KVM_DEVICE": "/nonexistent/kvm"])
        #expect(r.status == 0)
        #expect(r.out.contains("does not exist (ENOENT)") && r.out.contains("n/a"))
    }

    @Test func forcedKVMWithoutADeviceFailsClearly() throws {
        guard TestSupport.toolchain != nil else { try Test.cancel("needs the toolchain's clang") }
        let r = try run(["run", "--backend", "kvm", "\(TestSupport.root)/guest/scenarios/ud.S"],
                        env: ["VMM_HARNESS_KVM_DEVICE": "/nonexistent/kvm"])
        #expect(r.status == 2 && r.err.contains("KVM backend") && r.err.contains("ENOENT"))
    }
}
