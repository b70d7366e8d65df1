import Foundation

/// The readable listing of a run (what `vmm-harness run` prints without `--json`).
public enum ReportFormatter {
    public static func listing(_ r: RunReport, trace: Bool) -> String {
        var out: [String] = []
        out.append("\(r.image) on \(r.backend.kind.rawValue) — \(r.backend.reason)")
        if r.faultCount > 0 {
            out.append("faults (\(r.faultCount)):")
            for f in r.faults {
                let sym = f.symbol.map { " <\($0)>" } ?? ""
                var line = "  #\(f.index) \(f.name) (\(hex(f.vector, width: 2))) error \(hex(f.errorCode, width: 4)) at \(hex(f.cs, width: 4, prefix: "")):\(hex(f.eip, prefix: ""))\(sym) EFLAGS \(hex(f.eflags, prefix: "")) ring \(f.ring)"
                line += " → \(f.outcome)"
                if !f.handledBy.isEmpty { line += " (\(f.handledBy))" }
                if let cs = f.resumeCS, let eip = f.resumeEIP, f.outcome == "resumed" {
                    line += ", resumed at \(hex(cs, width: 4, prefix: "")):\(hex(eip, prefix: ""))"
                }
                out.append(line)
                if trace, let d = f.details {
                    for t in d.trace { out.append("      \(t)") }
                }
            }
            if r.faultCount > r.faults.count { out.append("  … \(r.faultCount - r.faults.count) more not listed") }
        }
        if !r.checkpoints.isEmpty {
            out.append("checkpoints: " + r.checkpoints.map { "\(hex($0.tag, width: 2))=\(hex($0.value))" }.joined(separator: " "))
        }
        if !r.console.isEmpty { out.append("console: \(r.console)") }
        for n in r.notes { out.append("note: \(n)") }
        for d in r.vmm?.diagnostics ?? [] { out.append("vmm: \(d)") }
        out.append("exit: \(r.exit.reason.rawValue) — \(r.exit.message) (exit code \(r.exit.exitCode))")
        if let g = r.finalRegisters {
            out.append("registers: EAX=\(hex(g.eax, prefix: "")) EBX=\(hex(g.ebx, prefix: "")) ECX=\(hex(g.ecx, prefix: "")) EDX=\(hex(g.edx, prefix: "")) ESI=\(hex(g.esi, prefix: "")) EDI=\(hex(g.edi, prefix: "")) EBP=\(hex(g.ebp, prefix: "")) ESP=\(hex(g.esp, prefix: ""))")
            out.append("           EIP=\(hex(g.eip, prefix: "")) EFLAGS=\(hex(g.eflags, prefix: "")) CS=\(hex(g.cs, width: 4, prefix: "")) SS=\(hex(g.ss, width: 4, prefix: "")) DS=\(hex(g.ds, width: 4, prefix: "")) ES=\(hex(g.es, width: 4, prefix: "")) FS=\(hex(g.fs, width: 4, prefix: "")) GS=\(hex(g.gs, width: 4, prefix: ""))")
        }
        let s = r.statistics
        out.append("statistics: \(r.faultCount) fault(s), \(s.backendRuns) backend run(s), \(s.instructions) instruction(s) interpreted, \(s.assists) assist(s), \(String(format: "%.6f", s.wallSeconds)) s")
        return out.joined(separator: "\n")
    }
}
