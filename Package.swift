// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "VMMHarness",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "VMMHarness", targets: ["VMMHarness"]),
        .executable(name: "vmm-harness", targets: ["vmm-harness"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The only C in the project: linux/kvm.h constants and fixed-arity ioctl wrappers.
        .target(name: "CKVM", path: "CKVM"),
        // The benchmark's C baseline: a minimal KVM fault loop that owns its own VM (see docs/benchmarks.md).
        .target(name: "CFaultFloor", path: "Sources/CFaultFloor"),
        // A malloc/free interposer that counts allocations; linked into the vmm-harness executable
        // only, so the library and its tests keep the system allocator untouched.
        .target(name: "CMallocCounter", path: "Sources/CMallocCounter"),
        // The harness: backends, machine, devices, VMM. The library product.
        .target(name: "VMMHarness", dependencies: ["CKVM"]),
        // The fault-latency benchmark (`vmm-harness bench`): rows, HdrHistogram percentiles, the C
        // floor, the table, JSON and chart. Not part of the library product.
        .target(
            name: "VMMHarnessBench",
            dependencies: [
                "VMMHarness",
                "CFaultFloor",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The random-program generator and the KVM-vs-interpreter comparison.
        .target(name: "VMMHarnessDifferential", dependencies: ["VMMHarness"]),
        .executableTarget(
            name: "vmm-harness",
            dependencies: [
                "VMMHarness",
                "VMMHarnessBench",
                "CMallocCounter",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The README's example program, built with the package so it cannot rot.
        .executableTarget(name: "readme-example", dependencies: ["VMMHarness"], path: "Examples/ReadmeExample"),
        .testTarget(name: "VMMHarnessTests",
                    dependencies: ["VMMHarness", "VMMHarnessBench", "VMMHarnessDifferential", "CKVM"]),
    ],
    swiftLanguageModes: [.v6]
)
