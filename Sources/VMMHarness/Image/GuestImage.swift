import Foundation

/// A user image ready to load: its bytes (loaded at `MemoryMap.imageBase`), where to enter it and
/// the symbols it defines (for reports and scenario expectations).
public struct GuestImage: Sendable {
    /// Where the image came from (a path, or a description).
    public var name: String
    public var bytes: [UInt8]
    /// Load address (always `MemoryMap.imageBase`).
    public var base: UInt32
    /// Entry point: `_start` for assembled sources, the first byte for flat binaries.
    public var entry: UInt32
    /// Symbol name → address.
    public var symbols: [String: UInt32]
    /// The source text, for `.S` images (scenario expectations are read from it).
    public var source: String?

    public init(name: String, bytes: [UInt8], base: UInt32 = MemoryMap.imageBase, entry: UInt32? = nil,
                symbols: [String: UInt32] = [:], source: String? = nil) {
        self.name = name
        self.bytes = bytes
        self.base = base
        self.entry = entry ?? base
        self.symbols = symbols
        self.source = source
    }

    /// The symbol at or below `address` (nearest preceding), with the offset into it.
    public func symbolize(_ address: UInt32) -> (name: String, offset: UInt32)? {
        var best: (String, UInt32)?
        for (n, a) in symbols where a <= address {
            if best == nil || a > best!.1 || (a == best!.1 && n < best!.0) { best = (n, a) }
        }
        guard let (n, a) = best else { return nil }
        return (n, address - a)
    }

    /// Largest image that fits the default guest memory.
    public static func maximumSize(memorySize: Int = MemoryMap.defaultMemorySize) -> Int {
        memorySize - Int(MemoryMap.imageBase)
    }

    /// Loads `path`: a `.S`/`.s` file is assembled with the toolchain, anything else is a flat binary.
    public static func load(path: String, memorySize: Int = MemoryMap.defaultMemorySize) throws(HarnessError) -> GuestImage {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw .badFile(path: path, reason: "no such file")
        }
        guard !isDir.boolValue else { throw .badFile(path: path, reason: "is a directory") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badFile(path: path, reason: "cannot be read")
        }
        let image: GuestImage
        if path.hasSuffix(".S") || path.hasSuffix(".s") {
            image = try GuestAssembler.assemble(source: String(decoding: data, as: UTF8.self), name: path)
        } else {
            image = GuestImage(name: path, bytes: [UInt8](data))
        }
        guard !image.bytes.isEmpty else { throw .badFile(path: path, reason: "is empty") }
        guard image.bytes.count <= maximumSize(memorySize: memorySize) else {
            throw .badFile(path: path, reason: "is \(image.bytes.count) bytes, more than the \(maximumSize(memorySize: memorySize)) bytes of guest memory above \(hex(MemoryMap.imageBase))")
        }
        return image
    }
}

/// Assembles guest sources with the Swift toolchain's clang and ld.lld.
public enum GuestAssembler {
    /// Assembles `source` (GNU assembler syntax, C preprocessor available) linked at `base`,
    /// entered at `_start` if defined. `harness.inc` and `vmm.inc` are on the include path.
    public static func assemble(source: String, name: String = "<source>", base: UInt32 = MemoryMap.imageBase,
                                toolchain: Toolchain? = nil) throws(HarnessError) -> GuestImage {
        let tc: Toolchain
        if let toolchain { tc = toolchain } else { tc = try Toolchain.find() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmm-harness-\(UUID().uuidString)").path
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try source.write(toFile: "\(dir)/input.S", atomically: false, encoding: .utf8)
            for (file, text) in GuestIncludes.files {
                try text.write(toFile: "\(dir)/\(file)", atomically: false, encoding: .utf8)
            }
        } catch {
            throw .system(call: "write(\(dir))", errno: Errno(rawValue: Int32((error as NSError).code)))
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r1 = try Subprocess.run(tc.clang, ["--target=i386-unknown-none", "-c", "-I", dir, "-o", "\(dir)/input.o", "\(dir)/input.S"])
        guard r1.status == 0 else {
            throw .assemblyFailed(path: name, output: r1.output.replacingOccurrences(of: "\(dir)/input.S", with: name))
        }
        let r2 = try Subprocess.run(tc.lld, ["-m", "elf_i386", "--image-base=0", "-Ttext=\(hex(base, prefix: "0x"))", "-N",
                                             "-e", "_start", "-o", "\(dir)/input.elf", "\(dir)/input.o"])
        guard r2.status == 0 else { throw .assemblyFailed(path: name, output: r2.output) }
        let r3 = try Subprocess.run(tc.objcopy, ["-O", "binary", "\(dir)/input.elf", "\(dir)/input.bin"])
        guard r3.status == 0 else { throw .assemblyFailed(path: name, output: r3.output) }
        let r4 = try Subprocess.run(tc.nm, ["--defined-only", "\(dir)/input.elf"])
        guard r4.status == 0 else { throw .assemblyFailed(path: name, output: r4.output) }
        guard let data = FileManager.default.contents(atPath: "\(dir)/input.bin") else {
            throw .badFile(path: name, reason: "assembler produced no output")
        }
        var symbols: [String: UInt32] = [:]
        for line in r4.output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 3, let v = UInt32(parts[0], radix: 16) else { continue }
            symbols[String(parts[2])] = v
        }
        return GuestImage(name: name, bytes: [UInt8](data), base: base, entry: symbols["_start"] ?? base,
                          symbols: symbols, source: source)
    }
}

/// Formats a value as upper-case hex with the DDK's trailing h, or with a prefix.
public func hex(_ v: some BinaryInteger, width: Int = 8, prefix: String? = nil) -> String {
    var s = String(v, radix: 16, uppercase: true)
    if s.count < width { s = String(repeating: "0", count: width - s.count) + s }
    if let prefix { return prefix + s }
    return s + "h"
}
