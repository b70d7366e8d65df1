import Foundation
import Testing
@testable import VMMHarness

/// Shared helpers for the test suite.
enum TestSupport {
    /// The package root (tests read guest/ sources from it).
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The backend options the CLI's environment variables select (`VMM_HARNESS_KVM_DEVICE`,
    /// `VMM_HARNESS_NO_SYNC_REGS`): scripts/test.sh runs the suite again with them set.
    static let backendOptions = BackendOptions(environment: ProcessInfo.processInfo.environment)

    /// The host as the tests see it (its KVM device from `backendOptions`).
    static var host: HostDescription { HostDescription.current(devicePath: backendOptions.kvmDevicePath) }

    /// Whether the KVM device really opens here (not just exists). Tests that need it are gated on this.
    static let kvmUsable: Bool = {
        if ProcessInfo.processInfo.environment["VMM_HARNESS_TEST_NO_KVM"] != nil { return false }
        return (try? KVMSystem(path: backendOptions.kvmDevicePath)) != nil
    }()

    /// Why KVM tests are skipped, for the test's comment.
    static var kvmSkipReason: String {
        host.kvmError ?? "KVM disabled by VMM_HARNESS_TEST_NO_KVM"
    }

    static let toolchain: Toolchain? = try? Toolchain.find()

    static func scenarioPaths() -> [String] {
        let dir = "\(root)/guest/scenarios"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasSuffix(".S") }.sorted().map { "\(dir)/\($0)" }
    }

    static func scenarioNames() -> [String] {
        scenarioPaths().map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
    }

    /// Cache of assembled scenarios (assembling runs clang and ld.lld).
    nonisolated(unsafe) private static var images: [String: GuestImage] = [:]
    private static let lock = NSLock()

    static func scenario(_ name: String) throws -> Scenario {
        lock.lock()
        defer { lock.unlock() }
        if let i = images[name] { return Scenario(image: i) }
        let i = try GuestImage.load(path: "\(root)/guest/scenarios/\(name).S")
        images[name] = i
        return Scenario(image: i)
    }

    /// Runs an image on the given backend with an optional host fault handler.
    static func run(_ image: GuestImage, on kind: BackendKind, needs: GuestNeeds = [], timeout: Double = 10,
                    handling: (any FaultHandling)? = nil) throws -> RunReport {
        var options = MachineOptions()
        options.timeout = timeout
        options.backend = backendOptions
        let m = try Harness.makeMachine(image: image, choice: kind == .kvm ? .kvm : .interpreter, needs: needs,
                                        options: options, faultHandling: handling)
        return m.run()
    }
}
