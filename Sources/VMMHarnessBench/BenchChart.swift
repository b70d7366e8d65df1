import VMMHarness
import Foundation

/// Draws the benchmark's chart as a self-contained SVG (no dependencies, opens in any browser):
/// latency percentiles per backend, path and fault kind on a logarithmic axis, and the p50 round
/// trip against the length of the handler chain.
public enum BenchChart {
    static let width = 1000.0
    static let left = 300.0
    static let right = 40.0
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                          "#7f7f7f", "#bcbd22", "#393b79", "#637939"]

    /// Escapes text for XML content and attribute values.
    public static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default:
                // Control characters other than tab/newline are not allowed in XML 1.0.
                if c.value < 0x20 && c != "\t" && c != "\n" { continue }
                out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Rows for the percentile panel: everything measured without a chain, and chains of one handler.
    static func percentileRows(_ r: BenchResult) -> [FaultBenchRow] {
        r.faults.filter { $0.latency != nil && $0.depth <= 1 }
    }

    /// Series for the depth panel: one per backend/path/fault with at least two depths measured.
    static func depthSeries(_ r: BenchResult) -> [(name: String, points: [(Int, UInt64)])] {
        var order: [String] = []
        var series: [String: [(Int, UInt64)]] = [:]
        for f in r.faults where f.depth > 0 && f.handler != .guest {
            guard let l = f.latency else { continue }
            let key = "\(f.backend) \(f.path.rawValue) \(BenchFaultKind(rawValue: f.fault)?.label ?? f.fault)"
            if series[key] == nil { order.append(key) }
            series[key, default: []].append((f.depth, l.p50Ns))
        }
        return order.compactMap { k in
            guard let p = series[k], p.count >= 2 else { return nil }
            return (k, p.sorted { $0.0 < $1.0 })
        }
    }

    /// The SVG document.
    public static func svg(_ r: BenchResult) -> String {
        let rows = percentileRows(r)
        let series = depthSeries(r)
        let rowH = 20.0
        let aTop = 70.0
        let aH = max(1, Double(rows.count)) * rowH
        let bTop = aTop + aH + 110
        let bH = 300.0
        let legendH = Double(series.count) * 16 + 20
        let height = bTop + bH + 60 + legendH
        var s = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="11">
        <rect width="100%" height="100%" fill="white"/>
        <text x="10" y="20" font-size="15" font-weight="bold">VMMHarness fault round trips</text>
        <text x="10" y="38">\(escape("\(r.host.cpu), kernel \(r.host.kernel), KVM flavour \(r.host.kvmFlavour); \(r.date)"))</text>

        """
        // Panel A: percentiles, log x.
        let values = rows.compactMap(\.latency).flatMap { [$0.p50Ns, $0.maxNs] }
        let (lo, hi) = decades(values)
        let plotW = width - left - right
        func x(_ v: UInt64) -> Double { left + (log10(Double(max(v, 1))) - lo) / (hi - lo) * plotW }
        s += "<text x=\"10\" y=\"\(f(aTop - 14))\" font-size=\"13\" font-weight=\"bold\">"
            + "Latency percentiles (log scale): p50 ● p90 ▮ p99 ◆ p99.9 ▲ max ✕</text>\n"
        s += axis(lo: lo, hi: hi, top: aTop, height: aH, x: { left + ($0 - lo) / (hi - lo) * plotW })
        for (i, row) in rows.enumerated() {
            guard let l = row.latency else { continue }
            let y = aTop + Double(i) * rowH + rowH / 2
            let color = palette[colorIndex(row.backend)]
            s += "<g class=\"series\" data-series=\"\(escape(row.label))\">"
            s += "<text x=\"\(left - 8)\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(escape(row.label))</text>"
            s += "<line x1=\"\(f(x(l.p50Ns)))\" y1=\"\(f(y))\" x2=\"\(f(x(l.p999Ns)))\" y2=\"\(f(y))\" stroke=\"\(color)\" stroke-width=\"2\"/>"
            s += "<line x1=\"\(f(x(l.p999Ns)))\" y1=\"\(f(y))\" x2=\"\(f(x(l.maxNs)))\" y2=\"\(f(y))\" stroke=\"\(color)\" stroke-width=\"1\" stroke-dasharray=\"2,2\"/>"
            s += "<circle cx=\"\(f(x(l.p50Ns)))\" cy=\"\(f(y))\" r=\"4\" fill=\"\(color)\"><title>p50 \(l.p50Ns) ns</title></circle>"
            s += "<rect x=\"\(f(x(l.p90Ns) - 1.5))\" y=\"\(f(y - 5))\" width=\"3\" height=\"10\" fill=\"\(color)\"><title>p90 \(l.p90Ns) ns</title></rect>"
            s += "<path d=\"M\(f(x(l.p99Ns))),\(f(y - 5)) l5,5 l-5,5 l-5,-5 z\" fill=\"\(color)\"><title>p99 \(l.p99Ns) ns</title></path>"
            s += "<path d=\"M\(f(x(l.p999Ns))),\(f(y - 5)) l5,9 l-10,0 z\" fill=\"\(color)\"><title>p99.9 \(l.p999Ns) ns</title></path>"
            s += "<text x=\"\(f(x(l.maxNs)))\" y=\"\(f(y + 4))\" text-anchor=\"middle\" fill=\"\(color)\">✕<title>max \(l.maxNs) ns</title></text>"
            s += "</g>\n"
        }
        // Panel B: p50 against chain depth, log2 x, log10 y.
        s += "<text x=\"10\" y=\"\(f(bTop - 30))\" font-size=\"13\" font-weight=\"bold\">p50 round trip against chain depth (Swift handlers; all but the last pass on)</text>\n"
        let depths = Set(series.flatMap { $0.points.map(\.0) }).sorted()
        let yValues = series.flatMap { $0.points.map(\.1) }
        let (ylo, yhi) = decades(yValues)
        let dmax = Double(max(2, depths.last ?? 64))
        func bx(_ d: Int) -> Double { left + log2(Double(max(d, 1))) / log2(dmax) * plotW }
        func by(_ v: UInt64) -> Double { bTop + bH - (log10(Double(max(v, 1))) - ylo) / (yhi - ylo) * bH }
        s += "<rect x=\"\(f(left))\" y=\"\(f(bTop))\" width=\"\(f(plotW))\" height=\"\(f(bH))\" fill=\"none\" stroke=\"#999\"/>\n"
        var e = Int(ylo)
        while Double(e) <= yhi {
            let y = bTop + bH - (Double(e) - ylo) / (yhi - ylo) * bH
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(escape(BenchReport.ns(pow(10, Double(e)))))</text>\n"
            e += 1
        }
        for d in depths {
            s += "<line x1=\"\(f(bx(d)))\" y1=\"\(f(bTop))\" x2=\"\(f(bx(d)))\" y2=\"\(f(bTop + bH))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(f(bx(d)))\" y=\"\(f(bTop + bH + 16))\" text-anchor=\"middle\">\(d)</text>\n"
        }
        s += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(bTop + bH + 34))\" text-anchor=\"middle\">handlers in the chain (log scale)</text>\n"
        for (i, sr) in series.enumerated() {
            let color = palette[i % palette.count]
            let pts = sr.points.map { "\(f(bx($0.0))),\(f(by($0.1)))" }.joined(separator: " ")
            s += "<g class=\"series\" data-series=\"\(escape(sr.name))\">"
            s += "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"/>"
            for p in sr.points {
                s += "<circle cx=\"\(f(bx(p.0)))\" cy=\"\(f(by(p.1)))\" r=\"3\" fill=\"\(color)\"><title>\(escape(sr.name)), depth \(p.0): p50 \(p.1) ns</title></circle>"
            }
            let ly = bTop + bH + 56 + Double(i) * 16
            s += "<line x1=\"\(f(left))\" y1=\"\(f(ly - 4))\" x2=\"\(f(left + 24))\" y2=\"\(f(ly - 4))\" stroke=\"\(color)\" stroke-width=\"2\"/>"
            s += "<text x=\"\(f(left + 30))\" y=\"\(f(ly))\">\(escape(sr.name))</text></g>\n"
        }
        s += "</svg>\n"
        return s
    }

    static func axis(lo: Double, hi: Double, top: Double, height: Double, x: (Double) -> Double) -> String {
        var s = ""
        var e = Int(lo)
        while Double(e) <= hi {
            let px = x(Double(e))
            s += "<line x1=\"\(f(px))\" y1=\"\(f(top))\" x2=\"\(f(px))\" y2=\"\(f(top + height))\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(f(px))\" y=\"\(f(top + height + 16))\" text-anchor=\"middle\">\(escape(BenchReport.ns(pow(10, Double(e)))))</text>\n"
            e += 1
        }
        return s
    }

    /// Whole decades covering `values` (log10), at least one decade wide.
    static func decades(_ values: [UInt64]) -> (Double, Double) {
        let logs = values.map { log10(Double(max($0, 1))) }
        let lo = floor(logs.min() ?? 1)
        var hi = ceil(logs.max() ?? 4)
        if hi <= lo { hi = lo + 1 }
        return (lo, hi)
    }

    static func colorIndex(_ backend: String) -> Int {
        switch backend {
        case "kvm": return 0
        case "interpreter": return 1
        case "c": return 2
        case "none": return 3
        case "host": return 8
        default: return 4
        }
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v) }
}
