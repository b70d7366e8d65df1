import Foundation
import Synchronization

/// A run's timeout clock on its own thread: at the deadline it marks the run expired and calls
/// `onExpire` (the backend's kick), unless cancelled first. A thread of its own (not a dispatch
/// queue) so a busy process cannot delay it.
final class Watchdog: @unchecked Sendable {
    private let condition = NSCondition()
    private var cancelled = false
    /// Set once at the deadline; read after every guest exit, so an atomic rather than the lock.
    private let fired = Atomic<Bool>(false)

    /// Whether the deadline has passed.
    var expired: Bool { fired.load(ordering: .acquiring) }

    /// Starts the clock: `onExpire` runs on the watchdog's thread after `nanoseconds`.
    func arm(afterNanoseconds nanoseconds: UInt64, _ onExpire: @escaping @Sendable () -> Void) {
        let deadline = Date(timeIntervalSinceNow: Double(nanoseconds) / 1e9)
        let thread = Thread { [self] in
            condition.lock()
            while !cancelled && Date() < deadline { _ = condition.wait(until: deadline) }
            let fire = !cancelled
            if fire { fired.store(true, ordering: .releasing) }
            condition.unlock()
            if fire { onExpire() }
        }
        thread.name = "vmm-harness watchdog"
        thread.start()
    }

    func cancel() {
        condition.lock()
        cancelled = true
        condition.signal()
        condition.unlock()
    }
}
