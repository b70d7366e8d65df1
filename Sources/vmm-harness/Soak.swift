import ArgumentParser
import Foundation
import VMMHarness

struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create, run and drop machines for a guest over and over, and report whether file descriptors or resident memory grow.",
        discussion: """
        Each cycle is a whole `vmm-harness run` of FILE in this process: a new machine on the chosen \
        backend, the VMM with the scenario's devices, the run, and everything dropped. After the warm-up \
        cycles the open descriptors (/proc/self/fd) and VmRSS are sampled, then again after the measured \
        cycles. Exit code 0: no growth; 8: a leak (any new descriptor, or VmRSS growth beyond \
        --rss-slack KiB); 1: bad input; 2: a cycle failed or ended differently from the first.
        """)

    @Argument(help: "The guest: a .S source or a flat binary.")
    var file: String

    @OptionGroup var runOptions: RunOptions

    @Option(help: "Measured cycles.")
    var cycles = 2_000

    @Option(help: "Cycles before the first sample.")
    var warmUp = 100

    @Option(name: .customLong("rss-slack"), help: "VmRSS growth (KiB) still counted as noise.")
    var rssSlack = 8 * 1024

    @Option(name: .customLong("device"), help: "Load a built-in Swift sample device (repeatable): \(SampleDevices.names.joined(separator: ", ")).")
    var devices: [String] = []

    @Flag(help: "Print the JSON report.")
    var json = false

    func validate() throws {
        guard (1...10_000_000).contains(cycles) else { throw ValidationError("--cycles must be between 1 and 10000000") }
        guard (0...1_000_000).contains(warmUp) else { throw ValidationError("--warm-up must be between 0 and 1000000") }
        guard rssSlack >= 0 else { throw ValidationError("--rss-slack must not be negative") }
    }

    func run() throws {
        let image: GuestImage
        do { image = try GuestImage.load(path: file) } catch { fail(error.description, code: 1) }
        var settings = SoakSettings()
        settings.cycles = cycles
        settings.warmUp = warmUp
        settings.residentSlackKiB = rssSlack
        runOptions.apply(to: &settings.configuration)
        settings.configuration.devices = devices
        let report: SoakReport
        do { report = try Harness.soak(Scenario(image: image), settings: settings) } catch { fail(error.description, code: 2) }
        if json {
            printJSON(report)
        } else {
            print(report.listing)
        }
        if !report.problems.isEmpty { throw ExitCode(8) }
    }
}
