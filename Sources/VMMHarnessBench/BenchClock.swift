import VMMHarness
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// CLOCK_MONOTONIC in nanoseconds (the same clock the C floor reads).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Records a timestamp at the same point of every round trip into a buffer allocated up front, so
/// recording allocates nothing. The first `warmup` ticks are ignored; then `measured + 1` ticks are
/// kept, giving `measured` intervals. Optionally records an allocation counter at the first and last
/// kept tick, so allocations are counted over exactly the measured round trips.
final class RoundTripClock {
    private let stamps: UnsafeMutableBufferPointer<UInt64>
    private var kept = 0
    private var toSkip: Int
    private let allocations: (@Sendable () -> UInt64)?
    private(set) var allocationsAtFirst: UInt64 = 0
    private(set) var allocationsAtLast: UInt64 = 0

    init(warmup: Int, measured: Int, allocations: (@Sendable () -> UInt64)?) {
        stamps = .allocate(capacity: measured + 1)
        toSkip = warmup
        self.allocations = allocations
    }

    deinit { stamps.deallocate() }

    @inline(__always)
    func tick() {
        let t = monotonicNanoseconds()
        if toSkip > 0 { toSkip -= 1; return }
        guard kept < stamps.count else { return }
        stamps[kept] = t
        if let allocations {
            if kept == 0 { allocationsAtFirst = allocations() }
            allocationsAtLast = allocations()
        }
        kept += 1
    }

    /// Intervals between consecutive kept ticks.
    var intervals: [UInt64] {
        kept < 2 ? [] : (1..<kept).map { stamps[$0] &- stamps[$0 - 1] }
    }

    /// Heap allocations per interval, when counted.
    var allocationsPerInterval: Double? {
        guard allocations != nil, kept >= 2 else { return nil }
        return Double(allocationsAtLast &- allocationsAtFirst) / Double(kept - 1)
    }
}

/// Wraps the machine's fault handling and ticks a clock at the start of every fault.
final class TimedFaultHandling: FaultHandling {
    let inner: any FaultHandling
    let clock: RoundTripClock
    init(inner: any FaultHandling, clock: RoundTripClock) { self.inner = inner; self.clock = clock }
    func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        clock.tick()
        return inner.handleFault(event, frame: &frame, details: &details)
    }
}

/// Fault handling without a VMM: advances `Client_EIP` and resumes (the machine-only baseline).
final class AdvancingFaultHandling: FaultHandling {
    let advance: UInt32
    init(advance: UInt32) { self.advance = advance }
    func handleFault(_ event: FaultEvent, frame: inout ClientRegisters, details: inout FaultDetails) -> FaultResolution {
        frame.eip &+= advance
        return .resume(handledBy: "bench")
    }
}
