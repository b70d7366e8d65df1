import ArgumentParser
import Foundation
import VMMHarness

@main
struct VMMHarnessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmm-harness",
        abstract: "Run 32-bit x86 guests on /dev/kvm or an interpreter, with a Windows 9x-style VMM handling their faults.",
        subcommands: [Run.self, Probe.self, Bench.self, Soak.self],
        defaultSubcommand: Run.self
    )
}

extension BackendChoice: ExpressibleByArgument {}

/// The options every way of running a guest shares. The CLI is the one place that reads the
/// environment: `VMM_HARNESS_BACKEND` (when `--backend` is auto), `VMM_HARNESS_KVM_DEVICE` and
/// `VMM_HARNESS_NO_SYNC_REGS` (see `VMMHarness.BackendOptions(environment:)`).
struct RunOptions: ParsableArguments {
    @Option(help: "Execution backend: auto (KVM if usable, else the interpreter), kvm or interpreter. Env: VMM_HARNESS_BACKEND.")
    var backend: BackendChoice = .auto

    @Option(help: "Wall-clock limit for the run, in seconds.")
    var timeout: Double = 10

    func validate() throws {
        guard timeout > 0, timeout <= 86_400 else { throw ValidationError("--timeout must be between 0 and 86400 seconds") }
    }

    /// The backend options of this process's environment.
    static var environmentBackendOptions: VMMHarness.BackendOptions {
        VMMHarness.BackendOptions(environment: ProcessInfo.processInfo.environment)
    }

    /// Puts these options (and the environment's) into `config`.
    func apply(to config: inout RunConfiguration) {
        let environment = ProcessInfo.processInfo.environment
        if let value = environment["VMM_HARNESS_BACKEND"], BackendChoice.from(environment: environment) == nil {
            fail("VMM_HARNESS_BACKEND=\(value) is not one of \(BackendChoice.allCases.map(\.rawValue).joined(separator: ", "))", code: 64)
        }
        if backend == .auto, let chosen = BackendChoice.from(environment: environment) {
            config.backend = chosen
            config.backendChoiceSource = "VMM_HARNESS_BACKEND=\(chosen.rawValue)"
        } else {
            config.backend = backend
        }
        config.options.timeout = timeout
        config.options.backend = VMMHarness.BackendOptions(environment: environment)
    }
}

/// Prints `value` as pretty, key-sorted JSON (the format of every `--json`); an encoding failure
/// is an error line and exit code 1.
func printJSON<T: Encodable>(_ value: T) {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    do { print(String(decoding: try enc.encode(value), as: UTF8.self)) } catch { fail("encoding the JSON: \(error)") }
}

/// Prints an error line and exits with `code`, without a stack trace.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("vmm-harness: \(message)\n".utf8))
    exit(code)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest image: a flat binary loaded at 1 MiB, or a .S source assembled on the fly (entered at _start).")

    @Argument(help: "The guest: a .S source or a flat binary.")
    var file: String

    @OptionGroup var runOptions: RunOptions

    @Flag(help: "Print the JSON report instead of the readable listing.")
    var json = false

    @Flag(help: "Show each fault's dispatch through the handler chains.")
    var trace = false

    @Flag(help: "Make register-rule violations by fault handlers end the run (exit code 7).")
    var strict = false

    @Option(name: .customLong("device"), help: "Load a built-in Swift sample device (repeatable): \(SampleDevices.names.joined(separator: ", ")).")
    var devices: [String] = []

    func run() throws {
        let image: GuestImage
        do { image = try GuestImage.load(path: file) } catch { fail(error.description, code: 1) }
        let scenario = Scenario(image: image)
        var config = RunConfiguration()
        runOptions.apply(to: &config)
        config.strictRegisterRules = strict
        config.devices = devices
        let report: RunReport
        do { report = try Harness.run(scenario, configuration: config) } catch { fail(error.description, code: 2) }
        if json {
            printJSON(report)
        } else {
            print(ReportFormatter.listing(report, trace: trace))
        }
        if report.exit.exitCode != 0 { throw ExitCode(report.exit.exitCode) }
    }
}

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report what this host's /dev/kvm can do, by opening it and running tiny probe guests.")

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let result = KVMProbe.run(devicePath: RunOptions.environmentBackendOptions.kvmDevicePath)
        if json {
            printJSON(result)
        } else {
            print(result.listing)
        }
    }
}
