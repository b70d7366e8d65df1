// swift-tools-version:5.4
// Tools version 5.4 on purpose: from 5.5 on, SwiftPM renames an executable's `main` and links
// `--defsym main=<target>_main`, which leaves no room for the `main` that libFuzzer supplies.
// The fuzz targets live in their own package so the main package's `swift build` never sees
// them: they are only built by scripts/fuzz.sh, with `-sanitize=fuzzer,address -parse-as-library`
// (libFuzzer supplies `main`). See docs/hardening.md.
import PackageDescription

let package = Package(
    name: "VMMHarnessFuzz",
    dependencies: [
        .package(name: "VMMHarness", path: ".."),
    ],
    targets: [
        // Turns fuzzer bytes into guest states, kvm_run images or guest memory; shared by the fuzz entry points.
        .target(name: "FuzzSupport", dependencies: [.product(name: "VMMHarness", package: "VMMHarness")]),
        // The interpreter alone: decoder and executor from a fuzzed start state.
        .executableTarget(name: "InterpreterFuzz", dependencies: ["FuzzSupport"]),
        // The Machine loop: IDT stubs, frame reading, a fuzzed host handler, resume from the frame.
        .executableTarget(name: "MachineFuzz", dependencies: ["FuzzSupport"]),
        // The KVM backend's kvm_run exit decoder and string-I/O element hand-out, on raw bytes.
        .executableTarget(name: "KVMExitFuzz", dependencies: ["FuzzSupport"]),
        // The guest Device Descriptor Block parser on fuzzed guest memory.
        .executableTarget(name: "DDBFuzz", dependencies: ["FuzzSupport"]),
    ],
    swiftLanguageVersions: [.v5]
)
