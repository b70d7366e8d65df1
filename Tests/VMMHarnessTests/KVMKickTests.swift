import CKVM
import Foundation
import Synchronization
import Testing
@testable import VMMHarness

/// Times the sentinel handler of `theKickHandlerComesAndGoesWithTheVCPUs` ran.
private let sentinelCalls = Atomic<Int>(0)

/// Kicking a vCPU out of KVM_RUN from another thread, and the kick signal's handler. Serialized:
/// the tests change process-wide signal state (each uses its own signal or thread).
@Suite(.serialized, .enabled(if: TestSupport.kvmUsable, "needs a /dev/kvm that opens: \(TestSupport.kvmSkipReason)"))
struct KVMKickTests {
    /// inc dword [counter]; jmp short back to the inc; hlt (offset 8, reached only by the host)
    static let counter = KVMGuest.buffer
    static let spin: [UInt8] = [0xFF, 0x05] + KVMGuest.le32(counter) + [0xEB, 0xF8, 0xF4]

    /// What the vCPU thread saw.
    struct Outcome: Sendable {
        var first: GuestExit?
        var kickPendingAfter = false
        var second: GuestExit?
        var error: String?
    }

    /// The current handler of `signal`, as a raw pointer to compare.
    static func handler(of signal: Int32) -> UnsafeRawPointer? {
        var now = sigaction()
        sigaction(signal, nil, &now)
        return unsafeBitCast(now.__sigaction_handler.sa_handler, to: UnsafeRawPointer?.self)
    }

    @Test(arguments: [false, true])
    func aKickEndsASpinningGuest(whileTheRunningThreadBlocksTheSignal blocks: Bool) throws {
        let backend = try KVMGuest.make(Self.spin)
        let kicker = try #require(backend.kicker)
        let signal = backend.options.kickSignal
        let outcome = Mutex(Outcome())
        let finished = DispatchSemaphore(value: 0)
        let thread = Thread {
            var o = Outcome()
            // The test's own thread, so it may set its mask (the library never changes a caller's
            // mask). Threads of the test process block SIGUSR1/SIGUSR2 by default (they inherit
            // the mask of the thread pools), so both ways are set explicitly.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, signal)
            pthread_sigmask(blocks ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
            do {
                o.first = try backend.run(instructionBudget: 1)
                var pending = sigset_t()
                sigemptyset(&pending)
                sigpending(&pending)
                o.kickPendingAfter = sigismember(&pending, signal) == 1
                // On to the HLT: a kick left behind would end this run with .interrupted instead.
                var s = try backend.readState()
                s.eip = KVMGuest.base + 8
                try backend.writeState(s)
                o.second = try backend.run(instructionBudget: 1)
            } catch {
                o.error = "\(error)"
            }
            let result = o
            outcome.withLock { $0 = result }
            finished.signal()
        }
        thread.start()
        // The guest is inside KVM_RUN once its counter moves (the loop has no exits); kick then.
        var ended = false
        while try backend.memory.read32(Self.counter) == 0 {
            if finished.wait(timeout: .now() + .milliseconds(1)) == .success {
                ended = true
                break
            }
        }
        #expect(!ended, "the run ended before it was kicked")
        kicker.kick()
        // A generous bound so a broken kick fails the test instead of hanging the suite.
        if !ended, finished.wait(timeout: .now() + 120) == .timedOut {
            Issue.record("the kick did not end KVM_RUN")
            return
        }
        let o = outcome.withLock { $0 }
        #expect(o.error == nil)
        #expect(o.first == .interrupted)
        #expect(!o.kickPendingAfter, "the kick signal was left pending on the vCPU thread")
        #expect(o.second == .halt)
        #expect(try backend.memory.read32(Self.counter) > 0)
    }

    @Test func aKickBeforeTheRunEndsItAtOnce() throws {
        let backend = try KVMGuest.make([0xF4])
        backend.kick()
        #expect(try backend.run(instructionBudget: 1) == .interrupted)
        #expect(try backend.run(instructionBudget: 1) == .halt)
    }

    @Test func aKickLeftPendingIsTakenWhenTheVCPUCloses() throws {
        // This thread blocks the signal for the test (restored after), so a kick after the run
        // waits in its pending set; closing the vCPU on this thread must take it.
        let signal = TestSupport.backendOptions.kickSignal
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        var saved = sigset_t()
        pthread_sigmask(SIG_BLOCK, &set, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        var backend: KVMBackend? = try KVMGuest.make([0xF4])
        #expect(try backend?.run(instructionBudget: 1) == .halt)
        backend?.kick()
        func kickPending() -> Bool {
            var pending = sigset_t()
            sigemptyset(&pending)
            sigpending(&pending)
            return sigismember(&pending, signal) == 1
        }
        #expect(kickPending())
        backend = nil
        #expect(backend == nil && !kickPending())
    }

    @Test func theKickHandlerComesAndGoesWithTheVCPUs() throws {
        let signal = SIGUSR1   // no other test uses it
        var sentinel = sigaction()
        sentinel.__sigaction_handler.sa_handler = { _ in sentinelCalls.add(1, ordering: .relaxed) }
        sigemptyset(&sentinel.sa_mask)
        var original = sigaction()
        try #require(sigaction(signal, &sentinel, &original) == 0)
        defer { sigaction(signal, &original, nil) }
        let sentinelHandler = Self.handler(of: signal)
        #expect(KickSignalHandler.users(of: signal) == 0)

        var options = TestSupport.backendOptions
        options.kickSignal = signal
        var first: KVMBackend? = try KVMGuest.make([0xF4], options: options)
        #expect(Self.handler(of: signal) != sentinelHandler)
        var second: KVMBackend? = try KVMGuest.make([0xF4], options: options)
        #expect(KickSignalHandler.users(of: signal) == 2)
        #expect(try second?.run(instructionBudget: 1) == .halt)   // records this thread as its vCPU thread
        let kicker = try #require(second?.kicker)
        first = nil
        #expect(first == nil && Self.handler(of: signal) != sentinelHandler)
        second = nil
        #expect(second == nil && Self.handler(of: signal) == sentinelHandler)
        #expect(KickSignalHandler.users(of: signal) == 0)

        // A kicker that outlived its backend only sets the flag in the mapping it keeps: no
        // signal reaches the restored handler.
        // (This thread may block the signal: then one sent would wait in the pending set.)
        let calls = sentinelCalls.load(ordering: .relaxed)
        kicker.kick()
        #expect(sentinelCalls.load(ordering: .relaxed) == calls)
        var pending = sigset_t()
        sigemptyset(&pending)
        sigpending(&pending)
        #expect(sigismember(&pending, signal) == 0)
    }
}
