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
    ],
    targets: [
        // The only C in the project: linux/kvm.h constants and fixed-arity ioctl wrappers.
        .target(name: "CKVM", path: "CKVM"),
        .target(
            name: "VMMHarness",
            dependencies: ["CKVM"]
        ),
        .executableTarget(
            name: "vmm-harness",
            dependencies: [
                "VMMHarness",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The README's example program, built with the package so it cannot rot.
        .executableTarget(name: "readme-example", dependencies: ["VMMHarness"], path: "Examples/ReadmeExample"),
        .testTarget(name: "VMMHarnessTests", dependencies: ["VMMHarness", "CKVM"]),
    ],
    swiftLanguageModes: [.v6]
)
