import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Makes a vCPU's `KVM_RUN` return from another thread (firecracker's kick): sets
/// `kvm_run.immediate_exit` with an atomic store and a fence, so a `KVM_RUN` about to start
/// returns at once, then sends the kick signal to the thread that runs the vCPU, so one already
/// inside returns too. Either way `run()` reports `.interrupted`.
///
/// The kicker keeps the vCPU's `kvm_run` mapping alive (never its file descriptors), so it stays
/// safe to call after the backend is gone: the flag lands in memory nobody reads, and no signal
/// is sent once the vCPU has closed.
public final class KVMKicker: BackendKicker, Sendable {
    private let runArea: KVMRunArea
    /// The signal sent to the vCPU thread (`BackendOptions.kickSignal`).
    public let signal: Int32
    /// The kernel thread id (gettid) of the thread that last ran the vCPU; 0 before the first run.
    /// Written (release) by the vCPU's `run()` only when the running thread changes, read
    /// (acquire) by `kick()`. A kernel id rather than a `pthread_t`: signalling a `pthread_t`
    /// whose thread has exited is undefined (glibc may touch freed memory); a stale kernel id at
    /// worst gets ESRCH.
    private let runnerThread = Atomic<Int32>(0)
    /// Whether the vCPU still exists. A kick holds this lock while it signals and the vCPU
    /// clears it (under the lock) before it gives up the signal handler, so no kick signal is
    /// sent after the handler may have been restored to something that would end the process.
    private let attached = Mutex<Bool>(true)
    /// Kicks so far: lets the vCPU tell whether one arrived while it used immediate_exit itself.
    private let kicks = Atomic<UInt64>(0)

    init(runArea: KVMRunArea, signal: Int32) {
        self.runArea = runArea
        self.signal = signal
    }

    /// Interrupts the vCPU's current or next `KVM_RUN`. Safe from any thread, any number of times.
    public func kick() {
        kicks.add(1, ordering: .sequentiallyConsistent)
        // Sound: the mapping outlives this kicker (held above); CKVM stores immediate_exit atomically.
        ckvm_kick_store(runArea.run)
        attached.withLock { attached in
            guard attached else { return }
            let thread = runnerThread.load(ordering: .acquiring)
            guard thread != 0 else { return }
            // ESRCH (the thread has exited) needs nothing more: the flag stops the next KVM_RUN.
            _ = ckvm_tgkill(thread, signal)
        }
    }

    /// How many kicks there have been.
    var kickCount: UInt64 { kicks.load(ordering: .sequentiallyConsistent) }

    /// The thread recorded as the vCPU's (relaxed: only the vCPU's own `run()` writes it).
    var recordedThread: Int32 { runnerThread.load(ordering: .relaxed) }

    /// Records `thread` as the one that runs the vCPU from now on.
    func record(thread: Int32) { runnerThread.store(thread, ordering: .releasing) }

    /// Called when the vCPU closes: later kicks only set the flag.
    func detach() { attached.withLock { $0 = false } }
}

/// The process-wide handler of each kick signal: installed when the first vCPU using that signal
/// is created, and the previous `sigaction` restored when the last one goes.
///
/// The handler does nothing; it is there so the signal interrupts `KVM_RUN` (EINTR, no
/// SA_RESTART) instead of taking its default action.
enum KickSignalHandler {
    private struct Installed {
        var users: Int
        var previous: sigaction
    }

    private static let installed = Mutex<[Int32: Installed]>([:])

    /// One more vCPU uses `signal`: installs the handler if it is the first.
    static func acquire(_ signal: Int32) throws(HarnessError) {
        try installed.withLock { (table: inout [Int32: Installed]) throws(HarnessError) in
            if var entry = table[signal] {
                entry.users += 1
                table[signal] = entry
                return
            }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0   // no SA_RESTART: KVM_RUN must return EINTR
            var previous = sigaction()
            guard sigaction(signal, &action, &previous) == 0 else {
                throw .system(call: "sigaction(\(signal), kick handler)", errno: .current)
            }
            table[signal] = Installed(users: 1, previous: previous)
        }
    }

    /// A vCPU using `signal` is gone: restores the previous handler after the last one.
    static func release(_ signal: Int32) {
        installed.withLock { table in
            guard var entry = table[signal] else { return }
            entry.users -= 1
            if entry.users > 0 {
                table[signal] = entry
                return
            }
            table[signal] = nil
            var previous = entry.previous
            // Cannot fail: the signal was accepted by the sigaction that installed the handler,
            // and `previous` is what the kernel returned for it.
            _ = sigaction(signal, &previous, nil)
        }
    }

    /// How many vCPUs use `signal` now (tests).
    static func users(of signal: Int32) -> Int {
        installed.withLock { $0[signal]?.users ?? 0 }
    }
}

/// The calling thread's kernel thread id, cached per thread (one gettid(2) per thread, then a
/// thread-specific read: `run()` checks it on every call).
enum CurrentThread {
    /// A thread-specific slot holding the id (nil if the process is out of keys: then every
    /// call asks the kernel). New threads start with an empty slot, so a reused `pthread_t`
    /// never inherits an old id.
    private static let slot: pthread_key_t? = {
        var key = pthread_key_t()
        return pthread_key_create(&key, nil) == 0 ? key : nil
    }()

    static var id: Int32 {
        guard let slot else { return ckvm_gettid() }
        if let cached = pthread_getspecific(slot) { return Int32(truncatingIfNeeded: Int(bitPattern: cached)) }
        let tid = ckvm_gettid()
        // A failure (ENOMEM) only means the next call asks the kernel again.
        _ = pthread_setspecific(slot, UnsafeRawPointer(bitPattern: Int(tid)))
        return tid
    }
}
