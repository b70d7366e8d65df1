import Foundation

/// What a scenario source states about itself, in comment lines:
///
///     // @description #UD from UD2
///     // @needs paging v86 alignment-check   (host features; `auto` picks a backend that has them)
///     // @expect-fault vector=06 error=0 eip=fault_here   (eip: a symbol or a hex address)
///     // @expect-exit halt           (an ExitReason raw value)
///     // @expect-reg eax=1234        (final register values, hex)
///     // @devices late-observer critical-fixer   (built-in Swift sample devices to load)
public struct Scenario: Sendable {
    public struct FaultExpectation: Sendable, Equatable {
        public var vector: UInt8
        public var errorCode: UInt32?
        /// A symbol of the image or a hex address.
        public var eip: String?
    }

    public var image: GuestImage
    public var description: String
    public var needs: GuestNeeds
    public var faults: [FaultExpectation]
    public var exit: ExitReason?
    public var registers: [String: UInt32]
    /// Built-in Swift sample devices the scenario wants loaded (`@devices name ...`, see `SampleDevices`).
    public var devices: [String]

    public init(image: GuestImage) {
        self.image = image
        description = ""
        needs = []
        faults = []
        exit = nil
        registers = [:]
        devices = []
        for raw in (image.source ?? "").split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard let at = line.range(of: "@") else { continue }
            let words = line[at.upperBound...].split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard let key = words.first else { continue }
            let args = Array(words.dropFirst())
            switch key {
            case "description":
                description = args.joined(separator: " ")
            case "needs":
                for a in args { if let n = GuestNeeds(word: a) { needs.insert(n) } }
            case "expect-fault":
                let kv = Scenario.pairs(args)
                if let v = kv["vector"].flatMap({ UInt8($0, radix: 16) }) {
                    faults.append(FaultExpectation(vector: v, errorCode: kv["error"].flatMap { UInt32($0, radix: 16) }, eip: kv["eip"]))
                }
            case "devices":
                devices += args
            case "expect-exit":
                exit = args.first.flatMap(ExitReason.init(rawValue:))
            case "expect-reg":
                for (k, v) in Scenario.pairs(args) { if let n = UInt32(v, radix: 16) { registers[k.lowercased()] = n } }
            default:
                continue
            }
        }
    }

    static func pairs(_ args: [String]) -> [String: String] {
        var d: [String: String] = [:]
        for a in args {
            let p = a.split(separator: "=", maxSplits: 1)
            if p.count == 2 { d[String(p[0])] = String(p[1]) }
        }
        return d
    }

    /// Address an expectation's `eip` names.
    public func address(_ name: String) -> UInt32? {
        image.symbols[name] ?? UInt32(name.hasPrefix("0x") ? String(name.dropFirst(2)) : name, radix: 16)
    }

    /// Compares a report with the expectations; returns the mismatches (empty = as expected).
    public func check(_ report: RunReport) -> [String] {
        var problems: [String] = []
        for (i, f) in faults.enumerated() {
            guard i < report.faults.count else {
                problems.append("expected fault #\(i) \(ExceptionNames.name(f.vector)) did not happen")
                continue
            }
            let r = report.faults[i]
            if r.vector != f.vector { problems.append("fault #\(i): vector \(hex(r.vector, width: 2)), expected \(hex(f.vector, width: 2))") }
            if let e = f.errorCode, r.errorCode != e { problems.append("fault #\(i): error code \(hex(r.errorCode, width: 4)), expected \(hex(e, width: 4))") }
            if let n = f.eip {
                if let a = address(n) {
                    if r.eip != a { problems.append("fault #\(i): EIP \(hex(r.eip)), expected \(hex(a)) (\(n))") }
                } else {
                    problems.append("fault #\(i): unknown symbol \(n)")
                }
            }
        }
        if let exit, report.exit.reason != exit {
            problems.append("exit \(report.exit.reason.rawValue) (\(report.exit.message)), expected \(exit.rawValue)")
        }
        if let regs = report.finalRegisters {
            let m = Mirror(reflecting: regs)
            for (k, v) in registers {
                guard let actual = m.children.first(where: { $0.label == k })?.value else {
                    problems.append("unknown register \(k)")
                    continue
                }
                let a: UInt32? = (actual as? UInt32) ?? (actual as? UInt16).map(UInt32.init)
                if a != v { problems.append("final \(k.uppercased()) = \(a.map { hex($0) } ?? "?"), expected \(hex(v))") }
            }
        }
        return problems
    }
}
