/// How to run an image end to end (what `vmm-harness run` does).
public struct RunConfiguration: Sendable {
    public var backend: BackendChoice = .auto
    public var options = MachineOptions()
    /// Register-rule violations end the run instead of being reported.
    public var strictRegisterRules = false
    /// Built-in sample devices to load (`SampleDevices.names`), besides the scenario's own.
    public var devices: [String] = []
    /// Where `backend` came from, for the report's reason (nil: "--backend NAME").
    public var backendChoiceSource: String?
    public init() {}
}

extension Harness {
    /// Runs `scenario` through the VMM: creates the machine on the chosen backend, registers the
    /// devices (the sample devices named, and every guest device whose DDB the image declares),
    /// boots the VMM (control messages, then the VMM's own fault handlers), runs the
    /// guest with every fault dispatched through Hook_VMM_Fault chains, and shuts the VMM down.
    /// `prepare` may hook Swift handlers or register more devices before the boot.
    public static func run(_ scenario: Scenario, configuration: RunConfiguration = RunConfiguration(),
                           prepare: (VirtualMachineManager) throws(HarnessError) -> Void = { _ throws(HarnessError) in })
        throws(HarnessError) -> RunReport
    {
        var config = VMMConfiguration()
        config.strictRegisterRules = configuration.strictRegisterRules
        config.vmmCodeRange = MemoryMap.runtimeBase..<MemoryMap.runtimeLimit
        let vmm = VirtualMachineManager(configuration: config)
        let machine = try makeMachine(image: scenario.image, choice: configuration.backend, needs: scenario.needs,
                                      options: configuration.options, faultHandling: nil,
                                      choiceSource: configuration.backendChoiceSource)
        let handling = VMMFaultHandling(vmm: vmm)
        handling.attach(to: machine)
        for device in try GuestDevice.discover(symbols: machine.image.symbols, memory: machine.memory) {
            do { try vmm.register(device) } catch { throw .invalidArgument("guest device \(device.name): \(error)") }
        }
        for name in configuration.devices + scenario.devices {
            guard let d = SampleDevices.make(name, memory: machine.memory) else {
                throw .invalidArgument("unknown device \(name); built-in devices: \(SampleDevices.names.joined(separator: ", "))")
            }
            do { try vmm.register(d) } catch { throw .invalidArgument("device \(name): \(error)") }
        }
        try prepare(vmm)
        do { try vmm.boot() } catch {
            if machine.finished == nil { throw .invalidArgument("VMM boot failed: \(error)") }
        }
        var report = machine.run()
        if machine.finished?.reason != .timeout { vmm.shutdown() }
        report.notes = machine.lateNotes
        // Again after the shutdown messages, which the summary lists too.
        report.vmm = handling.summary
                return report
    }
}
