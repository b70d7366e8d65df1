import Foundation

/// What `vmm-harness probe` found.
public struct ProbeResult: Sendable, Codable {
    public struct Feature: Sendable, Codable {
        public var name: String
        /// true / false, or nil when it could not be tested.
        public var supported: Bool?
        public var detail: String
    }

    public var host: HostDescription
    public var advice: String?
    public var capabilities: [String: Int32]
    public var features: [Feature]

    /// Whether the named feature was found to work.
    public func supports(_ name: String) -> Bool? { features.first { $0.name == name }?.supported }

    public var listing: String {
        var out = ["KVM device: \(host.kvmDevice) — \(host.kvmUsable ? "opens, API 12" : "not usable")",
                   "KVM flavour: \(host.kvmFlavour)  CPU: \(host.cpu)  kernel: \(host.kernel)"]
        if let advice { out.append("advice: \(advice)") }
        if !capabilities.isEmpty {
            out.append("capabilities: " + capabilities.keys.sorted().map { "\($0)=\(capabilities[$0] ?? 0)" }.joined(separator: " "))
        }
        for f in features {
            let s = f.supported.map { $0 ? "yes" : "NO " } ?? "n/a"
            out.append("  \(s)  \(f.name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(f.detail)")
        }
        return out.joined(separator: "\n")
    }
}

/// Probes the host's KVM with tiny guests, each bounded by a short timeout. Never throws: every
/// failure becomes a line of the result.
public enum KVMProbe {
    public static let faultFeature = "protected-mode fault delivery"
    public static let intFeature = "protected-mode INT n"
    public static let iretFeature = "protected-mode IRET"
    public static let ring3IntFeature = "ring-3 INT n"
    public static let pagingFeature = "32-bit paging"
    public static let v86Feature = "V86 mode"
    public static let alignmentFeature = "alignment check (#AC)"

    nonisolated(unsafe) private static var cache: [String: ProbeResult] = [:]
    private static let cacheLock = NSLock()

    /// Whether `feature` works on the KVM at `devicePath`, probing once per process.
    public static func cachedSupport(_ feature: String, devicePath: String) -> Bool? {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        if let r = cache[devicePath] { return r.supports(feature) }
        let r = run(devicePath: devicePath)
        cache[devicePath] = r
        return r.supports(feature)
    }

    /// Probes the KVM device at `devicePath` (callers pass `BackendOptions.kvmDevicePath`).
    public static func run(devicePath: String = "/dev/kvm") -> ProbeResult {
        let host = HostDescription.current(devicePath: devicePath)
        var result = ProbeResult(host: host, advice: host.kvmError, capabilities: [:], features: [])
        func untested(_ why: String) -> ProbeResult {
            for n in [faultFeature, intFeature, ring3IntFeature, iretFeature, pagingFeature, v86Feature, alignmentFeature] {
                result.features.append(.init(name: n, supported: nil, detail: "not tested: \(why); the interpreter runs everything"))
            }
            return result
        }
        guard host.kvmUsable else { return untested("KVM is not usable") }
        let capabilities: KVMDeviceCapabilities
        do { capabilities = try Backends.openKVMDevice(path: devicePath) } catch {
            result.advice = KVMDiagnosis.explain(error)
            return untested("KVM did not open again (\(error))")
        }
        result.capabilities = capabilities.table
        let base = MemoryMap.imageBase
        func le(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)] }

        // #UD through the IDT to the runtime's stub.
        result.features.append(probe(faultFeature, [0x0F, 0x0B], devicePath) { r in
            r.faults.first?.vector == 0x06 ? (true, "UD2 reached the #UD stub") : (false, summary(r))
        })
        // INT 30h: the emulator must deliver a software interrupt in protected mode.
        result.features.append(probe(intFeature, [0xCD, 0x30, 0xF4], devicePath) { r in
            if r.faults.first?.vector == 0x30 { return (true, "INT 30h reached its stub") }
            if r.exit.reason == .emulationFailure { return (false, "emulation failure at INT 30h; the harness finishes INT n with the interpreter (instruction assist)") }
            return (false, summary(r))
        })
        // Ring 3 through the control port (EAX = 1, ECX = target, EDX = stack, ESI = EFLAGS), then
        // INT 30h there (its gate has DPL 3).
        let ring3Int: [UInt8] = [0xB8] + le(1) + [0xB9] + le(base + 22) + [0xBA] + le(MemoryMap.ring3StackTop) +
            [0xBE] + le(2) + [0xE6, UInt8(Ports.control), 0xCD, 0x30, 0xEB, 0xFE]
        result.features.append(probe(ring3IntFeature, ring3Int, devicePath) { r in
            if r.faults.first?.vector == 0x30 { return (true, "INT 30h from ring 3 reached its stub") }
            if r.faults.first?.vector == 0x06 {
                return (false, "KVM injected #UD for INT 30h at CPL 3 (no exit); the harness runs ring-3 #UDs again in the instruction assist")
            }
            return (false, summary(r))
        })
        // PUSHFD; PUSH CS; PUSH target; IRETD; target: HLT
        result.features.append(probe(iretFeature, [0x9C, 0x0E, 0x68] + le(base + 8) + [0xCF, 0xF4], devicePath) { r in
            if r.exit.reason == .halt { return (true, "IRETD to the same ring returned to HLT") }
            if r.exit.reason == .emulationFailure { return (false, "emulation failure at IRETD; the harness resumes faults without IRET and assists guest IRETs") }
            return (false, summary(r))
        })
        // Identity-map 4 MiB with one page table, set CR3, turn on CR0.PG, HLT.
        var paging: [UInt8] = [0xB8] + le(base + 0x1000) + [0x0F, 0x22, 0xD8, 0x0F, 0x20, 0xC0, 0x0D] + le(0x8000_0000) +
            [0x0F, 0x22, 0xC0, 0xEB, 0x00, 0xF4]
        paging += [UInt8](repeating: 0, count: 0x1000 - paging.count)
        paging += le((base + 0x2000) | 3) + [UInt8](repeating: 0, count: 0x1000 - 4)
        for i in 0..<1024 { paging += le(UInt32(i) << 12 | 3) }
        result.features.append(probe(pagingFeature, paging, devicePath) { r in
            if r.exit.reason == .halt { return (true, "CR0.PG with a 4 KiB page table ran to HLT") }
            return (false, "\(summary(r)); the interpreter runs paging guests")
        })
        // V86: start at 0800:0000 with EFLAGS.VM and execute UD2; the #UD frame must have VM set.
        result.features.append(probe(v86Feature, [0xF4], devicePath, v86: true) { r in
            guard let f = r.faults.first else { return (false, summary(r)) }
            if f.eflags & EFlags.vm != 0 { return (true, "#UD from V86 code arrived with EFLAGS.VM set") }
            return (false, "EFLAGS.VM was not honoured (the fault came from protected mode); the interpreter runs V86 guests")
        })
        // CR0.AM, then ring 3 with EFLAGS.AC through the control port, then a misaligned load.
        let ac: [UInt8] = [0x0F, 0x20, 0xC0, 0x0D, 0x00, 0x00, 0x04, 0x00, 0x0F, 0x22, 0xC0,
                           0xB8, 0x01, 0x00, 0x00, 0x00, 0xB9] + le(base + 0x21) + [0xBA] + le(MemoryMap.ring3StackTop) +
            [0xBE] + le(EFlags.ac | EFlags.reserved1) + [0xE6, UInt8(Ports.control), 0xA1] + le(0x8_0001) + [0xF4]
        result.features.append(probe(alignmentFeature, ac, devicePath) { r in
            if r.faults.first?.vector == 0x11 { return (true, "a misaligned ring-3 load raised #AC") }
            return (false, "no #AC (first fault: \(r.faults.first.map { ExceptionNames.name($0.vector) } ?? "none")); the interpreter checks alignment")
        })
        return result
    }

    static func summary(_ r: RunReport) -> String {
        "ended with \(r.exit.reason.rawValue): \(r.exit.message)"
    }

    static func probe(_ name: String, _ bytes: [UInt8], _ devicePath: String, v86: Bool = false,
                      judge: (RunReport) -> (Bool, String)) -> ProbeResult.Feature {
        do {
            let memory = try GuestMemory(size: 8 << 20)
            // No instruction assist: the probes report what KVM itself does.
            let initial = Machine.initialState(entry: MemoryMap.imageBase, layout: try RuntimeImage.layout())
            let backend = try Backends.make(.kvm, memory: memory, initialState: initial,
                                            options: BackendOptions(kvmDevicePath: devicePath), assist: nil)
            let host = HostDescription(kvmFlavour: "", kvmDevice: devicePath, kvmUsable: true, kvmError: nil, cpu: "", kernel: "")
            var options = MachineOptions()
            options.timeout = 2
            let machine = try Machine(image: GuestImage(name: name, bytes: bytes), memory: memory, backend: backend,
                                      backendReport: BackendReport(kind: .kvm, reason: "probe", host: host), options: options)
            if v86 {
                try memory.writeBytes(0x8000, [0x0F, 0x0B])
                var s = try backend.readState()
                let seg = { (sel: UInt16) in
                    SegmentRegister(selector: sel, base: UInt32(sel) << 4, limit: 0xFFFF, type: 3, isCodeOrData: true,
                                    dpl: 3, present: true)
                }
                s.cs = seg(0x0800); s.ss = seg(0x0700); s.ds = seg(0); s.es = seg(0); s.fs = seg(0); s.gs = seg(0)
                s.eip = 0; s.esp = 0x0FFE
                s.eflags = EFlags.vm | EFlags.reserved1
                try backend.writeState(s)
            }
            let (ok, detail) = judge(machine.run())
            return .init(name: name, supported: ok, detail: detail)
        } catch {
            return .init(name: name, supported: false, detail: "could not run the probe: \(error)")
        }
    }
}
