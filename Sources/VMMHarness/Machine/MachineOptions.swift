/// Options for one run. Validated when a machine is made (`validate()`).
public struct MachineOptions: Sendable {
    /// Guest memory size in bytes.
    public var memorySize = MemoryMap.defaultMemorySize
    /// Wall-clock limit for the run in seconds (nil: none). Must be finite and above 0.
    public var timeout: Double? = 10
    /// Faults listed individually in the report (the rest are only counted).
    public var maxRecordedFaults = 1000
    /// The same fault with identical registers this many times in a row ends the run as a fault storm.
    public var faultStormLimit = 64
    /// Interpreter instructions per slice between clock checks.
    public var sliceInstructions = 1 << 16
    /// Record every frame field in each fault record.
    public var recordFrames = true
    /// How backends are made (KVM device, sync regs, kick signal).
    public var backend = BackendOptions()
    public init() {}

    /// Longest accepted timeout: about 31 years, far inside UInt64 nanoseconds.
    public static let maximumTimeout: Double = 1e9

    /// Refuses values a run cannot honour (a negative, zero, NaN or huge timeout; counts below 1).
    public func validate() throws(HarnessError) {
        if let t = timeout, !(t > 0 && t <= Self.maximumTimeout) {
            throw .invalidArgument("timeout \(t) s is not a positive number of seconds up to \(Self.maximumTimeout)")
        }
        guard maxRecordedFaults >= 0 else { throw .invalidArgument("maxRecordedFaults \(maxRecordedFaults) is negative") }
        guard faultStormLimit >= 1 else { throw .invalidArgument("faultStormLimit \(faultStormLimit) is below 1") }
        guard sliceInstructions >= 1 else { throw .invalidArgument("sliceInstructions \(sliceInstructions) is below 1") }
        guard memorySize > 0 else { throw .invalidArgument("memorySize \(memorySize) is not positive") }
    }

    /// The timeout in nanoseconds (validated: finite, positive, bounded).
    var timeoutNanoseconds: UInt64? { timeout.map { UInt64($0 * 1e9) } }
}
