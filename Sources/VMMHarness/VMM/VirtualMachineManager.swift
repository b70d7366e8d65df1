/// The version Get_VMM_Version reports: AH = major, AL = minor (`DDK_VERSION`), ECX = debug revision.
public struct VMMVersion: Equatable, Hashable, Sendable, Codable {
    public var major: UInt8
    public var minor: UInt8
    /// ECX: the debug development revision (0 for a retail VMM).
    public var debugRevision: UInt32
    public init(major: UInt8, minor: UInt8, debugRevision: UInt32 = 0) {
        self.major = major; self.minor = minor; self.debugRevision = debugRevision
    }
    /// 4.00 (0400h), Windows 95.
    public static let windows95 = VMMVersion(major: 4, minor: 0x00)
    /// 4.10 (040Ah), Windows 98. The harness's default.
    public static let windows98 = VMMVersion(major: 4, minor: 0x0A)
}

/// How a `VirtualMachineManager` is set up.
public struct VMMConfiguration {
    /// What Get_VMM_Version returns (default 040Ah, Windows 98).
    public var version: VMMVersion = .windows98
    /// The system VM's handle (also the current VM: the harness runs one VM).
    public var systemVM: VMHandle = VMMHostArea.systemVMHandle
    /// Which vectors get a VMM handler at boot and what those do (default: pass everything on).
    public var ownFaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// The same for the VMM's own Hook_PM_Fault handlers (protected-mode application faults).
    public var ownPMFaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// The same for the VMM's own Hook_V86_Fault handlers (virtual-8086 faults).
    public var ownV86FaultPolicy: VMMOwnFaultPolicy = .passOnEverything
    /// Strict mode. When true, a register-rule violation ends dispatch with
    /// `FaultDispatchError.registerViolation` (`NMIDispatchError`/`IRQDispatchError` likewise), and a
    /// service called from an NMI handler ends `dispatchNMI` with `.serviceCallFromNMIHandler`;
    /// otherwise both are recorded in the trace and `diagnostics` and dispatch goes on.
    public var strictRegisterRules = false
    /// Guest addresses of "the VMM's own code", named `VMM(01)` in fatal-exception reports.
    public var vmmCodeRange: Range<UInt32>? = nil
    /// The service table (default `VMMServiceTable.standard`).
    public var services: VMMServiceTable = .standard

    public init() {}
}

/// Where the VMM is in its life.
public enum VMMPhase: String, Sendable, Codable {
    case notBooted = "not booted"
    case sysCriticalInit = "Sys_Critical_Init"
    case deviceInit = "Device_Init"
    case initComplete = "Init_Complete"
    case sysVMInit = "Sys_VM_Init"
    case running
    case shuttingDown = "shutting down"
    case shutDown = "shut down"
    case failed
}

/// The Windows 95/98 Virtual Machine Manager's fault-hook services on the host: the service table,
/// the Hook_VMM_Fault chains with their three tiers, devices and control messages, the register
/// and asynchronous-service rules, and fault dispatch with a trace. Pure logic: the machine calls
/// `dispatchFault` per ring-0 fault and `callService` per guest `VMMcall`.
///
/// Not thread-safe; the VMM is single-threaded, as in Windows.
///
/// Decisions where the DDK is silent:
/// - Chains: each hook record keeps the previous handler it was given; dispatch starts at the
///   newest hook and follows those links. A handler that passes on with no previous left ends the
///   walk: the fault is unhandled and the result is the Windows fatal-exception report.
/// - Tiers: hooks made before the VMM installs its own handlers (during Sys_Critical_Init, or
///   before `boot()`) are `.criticalInit`; later ones are `.postCriticalInit`.
/// - The VMM's own handlers: one per vector of `VMMOwnFaultPolicy.vectors` (default 00h–4Fh
///   except 02h), each with its own host-area address, named "VMM"; they pass on by default.
/// - A device failing Sys_Critical_Init, Device_Init or Init_Complete gets no further messages and
///   loses every hook it made while its control procedure ran (Unhook semantics, newest first);
///   the boot log lists them. Hooks it makes later from fault handlers are not tracked.
/// - Hook_VMM_Fault refuses ESI = 0 (`.nullHandler`, carry set) so "previous = 0" stays unambiguous.
/// - Register rules: see `RegisterViolation`. Violations are recorded and, unless strict, the next
///   handler gets the registers as the breaking handler left them (what the CPU would do).
/// - Async-only: a synchronous service called with a reentrancy count above 0 is reported in
///   `diagnostics` and the visit's `serviceCalls`, and still runs (the debug VMM reported it).
/// - Fatal_Error_Handler from a fault handler ends dispatch with `.terminated` once the handler returns.
/// - Host-area slots are never reused after Unhook_VMM_Fault.
/// - Hook_PM_Fault / Hook_V86_Fault keep their own chains per vector, with the same validation,
///   tiers, register rules and unhook relinking; the VMM's own PM and V86 handlers live in fixed
///   reserved slots (`VMMHostArea.ownHandlerAddress`), so they do not move other handlers' addresses.
///   See `FaultChainKind` and `dispatchFault(_:vector:frame:frameAddress:entryRegisters:)`.
/// - NMI (Get/Set_NMI_Handler_Addr, Hook_NMI_Event, `dispatchNMI`) and the minimal virtual PIC
///   (`virtualizeIRQ`, `raiseIRQ`, `dispatchIRQ`) are described where they are declared.
public final class VirtualMachineManager {
    @exclusivity(unchecked) public var configuration: VMMConfiguration
    /// Reads guest strings for Out_Debug_String and Fatal_Error_Handler.
    public var guestMemory: (any GuestStringReader)?
    /// Runs guest fault handlers. Held weakly (the machine that implements it owns the VMM).
    public weak var guestCallout: (any GuestFaultCallout)?
    /// Names for guest handler addresses in traces (e.g. from the image's symbols).
    public var guestHandlerNames: [FaultHandlerAddress: String] = [:]

    /// Get_VMM_Reenter_Count: above 0 while a fault handler runs (0 inside Begin_Reentrant_Execution).
    @exclusivity(unchecked) public internal(set) var reenterCount: UInt32 = 0
    /// Whether (virtual) interrupts are enabled: false during Sys_Critical_Init, Sys_Critical_Exit
    /// and while a fault handler runs.
    @exclusivity(unchecked) public internal(set) var interruptsEnabled = false
    /// The current VM (Get_Cur_VM_Handle).
    public var currentVM: VMHandle { configuration.systemVM }
    /// The system VM (Get_Sys_VM_Handle).
    public var systemVM: VMHandle { configuration.systemVM }
    /// What Out_Debug_String / Out_Debug_Chr wrote.
    public internal(set) var debugLog = ""
    /// Reports made without stopping (synchronous services from fault handlers, register-rule
    /// violations in non-strict mode, bad service arguments).
    @exclusivity(unchecked) public internal(set) var diagnostics: [VMMDiagnostic] = []
    /// Set once Fatal_Error_Handler was called: the run must end.
    public internal(set) var termination: FatalErrorReport? {
        didSet { terminationCount += 1 }
    }
    @exclusivity(unchecked) var terminationCount = 0
    public private(set) var phase: VMMPhase = .notBooted
    /// Control messages and boot/shutdown events, in order.
    public private(set) var bootLog: [BootEvent] = []

    // Devices.
    enum DeviceState { case registered, loaded, failed }
    struct DeviceEntry {
        var device: any VirtualDevice
        var state: DeviceState
    }
    @exclusivity(unchecked) var devices: [DeviceEntry] = []
    /// Index of the device whose control procedure is running (owner of hooks made meanwhile).
    var currentDevice: Int?

    // Chains.
    struct HookRecord {
        var chain: FaultChainKind
        var vector: UInt8
        var address: FaultHandlerAddress
        var name: String
        var kind: FaultHandlerKind
        var tier: FaultHookTier
        /// The previous handler given to this hook (what it passes on to).
        var previousAddress: FaultHandlerAddress?
        var previousRecord: Int?
        var owner: Int?
        var active: Bool
    }
    @exclusivity(unchecked) var records: [HookRecord] = []
    struct ChainKey: Hashable {
        var chain: FaultChainKind
        var vector: UInt8
    }
    /// The newest record of each chain, by chain and vector: a flat table, since every fault
    /// looks its chain up (a dictionary lookup hashed the key each time).
    struct ChainHeads {
        private var table = [Int32](repeating: -1, count: FaultChainKind.allCases.count * 256)
        private static func slot(_ key: ChainKey) -> Int {
            let chain: Int
            switch key.chain {
            case .vmm: chain = 0
            case .pm: chain = 1
            case .v86: chain = 2
            }
            return chain &* 256 &+ Int(key.vector)
        }
        subscript(key: ChainKey) -> Int? {
            get {
                let v = table[Self.slot(key)]
                return v < 0 ? nil : Int(v)
            }
            set { table[Self.slot(key)] = newValue.map { Int32(truncatingIfNeeded: $0) } ?? -1 }
        }
    }
    // The dispatch state below is touched on every fault. Unchecked exclusivity: the VMM runs on
    // one thread, and no access to these overlaps another (no inout access to them is held across
    // a handler call), so the runtime's dynamic exclusivity checks only cost time (about a tenth
    // of a fault round trip on the interpreter).
    @exclusivity(unchecked) var heads = ChainHeads()
    var ownHandlersInstalled = false

    // Host handler slots.
    struct HostSlot {
        var name: String
        var kind: FaultHandlerKind
    }
    var slots: [HostSlot] = []

    // Dispatch state.
    @exclusivity(unchecked) var activeVector: UInt8?
    /// Name of the handler running now, for diagnostics. Built only when asked for: the fault
    /// path records the running record's index instead of formatting a string per visit.
    var currentHandlerName: String? {
        get {
            if let currentHandlerLabel { return currentHandlerLabel }
            guard let i = currentHandlerRecord, records.indices.contains(i) else { return nil }
            return "\(records[i].name) at \(records[i].address)"
        }
        set {
            currentHandlerLabel = newValue
            currentHandlerRecord = nil
        }
    }
    @exclusivity(unchecked) private var currentHandlerLabel: String?
    @exclusivity(unchecked) private var currentHandlerRecord: Int?
    /// Whether dispatches build their full trace (each visit's register and frame diffs, names,
    /// outcome text). The machine turns it off for faults it will not list in the report (the
    /// benchmark's loops), so the dispatch path allocates nothing; rule checks and diagnostics
    /// work either way.
    @exclusivity(unchecked) public var recordsTraces = true
    @exclusivity(unchecked) var currentVisitCalls: [ServiceCallRecord] = []
    @exclusivity(unchecked) var reentrantDepth = 0

    // NMI (see NMIServices.swift).
    struct NMIRecord {
        var address: FaultHandlerAddress
        var name: String
        var kind: FaultHandlerKind
        var tier: FaultHookTier
        var previousAddress: FaultHandlerAddress
        var previousRecord: Int?
    }
    var nmiRecords: [NMIRecord] = []
    var nmiHead: Int?
    struct NMIEventRecord {
        var address: FaultHandlerAddress
        var name: String
        var kind: NMIEventKind
    }
    enum NMIEventKind {
        case host(NMIEventProc)
        case guest(FaultHandlerAddress)
    }
    var nmiEvents: [NMIEventRecord] = []
    /// Set while an NMI handler (not an event) runs: every service call is a violation.
    var nmiHandlerRunning = false
    var nmiServiceViolation: (service: String, handler: String?)?
    var nmiDispatchActive = false

    // Virtual PIC (see VirtualPIC.swift).
    var virtualIRQs: [UInt8: VirtualIRQ] = [:]
    var irqKinds: [UInt8: FaultHandlerKind] = [:]
    @exclusivity(unchecked) var pendingIRQMask: UInt16 = 0

    public init(configuration: VMMConfiguration = VMMConfiguration()) {
        self.configuration = configuration
    }

    // MARK: - Devices, boot and shutdown

    /// Adds a device before boot (the DDB list of SYSTEM.INI `device=` lines).
    public func register(_ device: any VirtualDevice) throws(DeviceRegistrationError) {
        guard phase == .notBooted else { throw .alreadyBooted(device.name) }
        let name = device.name
        guard (1...8).contains(name.utf8.count), name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .invalidName(name)
        }
        if device.deviceID == VMMServiceTable.vmmDeviceID { throw .duplicateDeviceID(device.deviceID, existing: "VMM") }
        if device.deviceID != 0, let other = devices.first(where: { $0.device.deviceID == device.deviceID }) {
            throw .duplicateDeviceID(device.deviceID, existing: other.device.name)
        }
        devices.append(DeviceEntry(device: device, state: .registered))
    }

    /// Device indices in ascending init order, ties in registration order.
    private var initOrder: [Int] {
        devices.indices.sorted { (devices[$0].device.initOrder, $0) < (devices[$1].device.initOrder, $1) }
    }

    /// Boots: Sys_Critical_Init (interrupts disabled) to every device in init order; the VMM installs
    /// its own fault handlers; then Device_Init, Init_Complete and Sys_VM_Init (interrupts enabled).
    ///
    /// A device that fails (carry set) Sys_Critical_Init, Device_Init or Init_Complete is dropped:
    /// it gets no further messages, and every hook made while its control procedure ran is removed
    /// with Unhook_VMM_Fault semantics (newest first); the boot log lists them. A failure at
    /// Sys_VM_Init ends boot with `BootError.sysVMInitFailed` (Windows exits).
    @discardableResult
    public func boot() throws(BootError) -> [BootEvent] {
        guard phase == .notBooted else { throw .alreadyBooted }
        let order = initOrder
        for i in order { devices[i].state = .loaded }

        interruptsEnabled = false
        phase = .sysCriticalInit
        broadcast(.sysCriticalInit, to: order, dropOnFailure: true)

        installOwnHandlers()
        interruptsEnabled = true

        phase = .deviceInit
        broadcast(.deviceInit, to: order, dropOnFailure: true)
        phase = .initComplete
        broadcast(.initComplete, to: order, dropOnFailure: true)
        phase = .sysVMInit
        for i in order where devices[i].state == .loaded {
            if !send(.sysVMInit, to: i) {
                phase = .failed
                throw .sysVMInitFailed(device: devices[i].device.name)
            }
        }
        phase = .running
        return bootLog
    }

    /// Shuts down: Sys_VM_Terminate, System_Exit, then Sys_Critical_Exit with interrupts disabled,
    /// each to every loaded device in init order. Failures are logged only.
    @discardableResult
    public func shutdown() -> [BootEvent] {
        let order = initOrder
        phase = .shuttingDown
        broadcast(.sysVMTerminate, to: order, dropOnFailure: false)
        broadcast(.systemExit, to: order, dropOnFailure: false)
        interruptsEnabled = false
        broadcast(.sysCriticalExit, to: order, dropOnFailure: false)
        phase = .shutDown
        return bootLog
    }

    private func broadcast(_ message: ControlMessage, to order: [Int], dropOnFailure: Bool) {
        for i in order where devices[i].state == .loaded {
            if !send(message, to: i), dropOnFailure { drop(i, after: message) }
        }
    }

    private func send(_ message: ControlMessage, to index: Int) -> Bool {
        let device = devices[index].device
        currentDevice = index
        let ok = device.control(message: message, vm: systemVM, vmm: self)
        currentDevice = nil
        bootLog.append(BootEvent(kind: .controlMessage, device: device.name, message: message, succeeded: ok,
                                 interruptsEnabled: interruptsEnabled, detail: ""))
        return ok
    }

    private func drop(_ index: Int, after message: ControlMessage) {
        devices[index].state = .failed
        var removed: [String] = []
        for r in records.indices.reversed() where records[r].active && records[r].owner == index {
            let prefix = records[r].chain == .vmm ? "" : "\(records[r].chain.rawValue) "
            removed.append("\(prefix)\(vmmHex(records[r].vector, 2))h \(records[r].address)")
            unlink(r)
        }
        let detail = "not loaded (failed \(message.name)); "
            + (removed.isEmpty ? "no fault hooks to remove" : "unhooked " + removed.joined(separator: ", "))
        bootLog.append(BootEvent(kind: .deviceUnloaded, device: devices[index].device.name, message: message,
                                 succeeded: false, interruptsEnabled: interruptsEnabled, detail: detail))
    }

    private func installOwnHandlers() {
        let vectors = configuration.ownFaultPolicy.vectors
        var installed = 0
        for v in vectors {
            guard let address = allocateSlot(name: "VMM", kind: .vmmDefault) else { break }
            _ = insert(.vmm, vector: v, address: address, name: "VMM", kind: .vmmDefault, tier: .vmm, owner: nil)
            installed += 1
        }
        // The PM and V86 handlers sit in reserved slots (fixed addresses per vector).
        var other: [String] = []
        for chain in [FaultChainKind.pm, .v86] {
            var n = 0
            for v in ownPolicy(chain).vectors {
                guard let address = VMMHostArea.ownHandlerAddress(chain, vector: v) else { continue }
                _ = insert(chain, vector: v, address: address, name: "VMM", kind: .vmmDefault, tier: .vmm, owner: nil)
                n += 1
            }
            other.append("\(n) \(chain.rawValue)")
        }
        ownHandlersInstalled = true
        bootLog.append(BootEvent(kind: .vmmHandlersInstalled, device: "VMM", message: nil, succeeded: true,
                                 interruptsEnabled: interruptsEnabled,
                                 detail: "installed its own fault handlers for \(installed) vectors"
                                     + " (and " + other.joined(separator: ", ") + ")"))
    }

    /// The policy of the VMM's own handlers in `chain`.
    func ownPolicy(_ chain: FaultChainKind) -> VMMOwnFaultPolicy {
        switch chain {
        case .vmm: return configuration.ownFaultPolicy
        case .pm: return configuration.ownPMFaultPolicy
        case .v86: return configuration.ownV86FaultPolicy
        }
    }

    /// Names of the devices in init order with whether they are loaded (for reports).
    public var deviceStates: [(name: String, loaded: Bool)] {
        initOrder.map { (devices[$0].device.name, devices[$0].state != .failed) }
    }

    // MARK: - Services: table face

    /// Calls a service by id with register-based arguments (a `VMMcall` from the guest or a Swift
    /// caller). Synchronous services called while a fault handler runs are reported.
    public func callService(_ id: VMMServiceID, registers: inout ServiceRegisters) throws(VMMServiceError)
        -> ServiceCallOutcome
    {
        let service = try configuration.services.service(for: id)
        note(service)
        return try service.implementation(self, &registers)
    }

    /// `VMMcall` with the dword that follows `INT 20h`.
    public func callService(vmmcallOperand: UInt32, registers: inout ServiceRegisters) throws(VMMServiceError)
        -> ServiceCallOutcome
    {
        try callService(VMMServiceID(vmmcallOperand: vmmcallOperand), registers: &registers)
    }

    /// Records a call and applies the async-only rule (the debug VMM's report; the call still runs).
    func note(_ service: VMMService) {
        let record = ServiceCallRecord(name: service.name, ordinal: service.ordinal,
                                       isAsynchronous: service.isAsynchronous, reenterCount: reenterCount)
        if activeVector != nil { currentVisitCalls.append(record) }
        if nmiHandlerRunning {
            // NMI handlers may call no service at all (asynchronous ones included).
            diagnostics.append(.serviceCallFromNMIHandler(service: service.name, handler: currentHandlerName))
            if nmiServiceViolation == nil { nmiServiceViolation = (service.name, currentHandlerName) }
        } else if record.violatesAsyncRule {
            diagnostics.append(.synchronousServiceFromFaultHandler(service: service.name, handler: currentHandlerName))
        }
    }

    func note(ordinal: UInt16) {
        if let s = configuration.services[ordinal] { note(s) }
    }

    // MARK: - Services: Swift face

    /// Get_VMM_Version (0000h).
    public func getVMMVersion() -> VMMVersion {
        note(ordinal: VMMServiceOrdinal.getVMMVersion)
        return versionValue
    }
    var versionValue: VMMVersion { configuration.version }

    /// Get_Cur_VM_Handle (0001h): EBX.
    public func getCurVMHandle() -> VMHandle {
        note(ordinal: VMMServiceOrdinal.getCurVMHandle)
        return currentVM
    }

    /// Test_Cur_VM_Handle (0002h): ZF set if `vm` is the current VM.
    public func testCurVMHandle(_ vm: VMHandle) -> Bool {
        note(ordinal: VMMServiceOrdinal.testCurVMHandle)
        return vm == currentVM
    }

    /// Get_Sys_VM_Handle (0003h): EBX.
    public func getSysVMHandle() -> VMHandle {
        note(ordinal: VMMServiceOrdinal.getSysVMHandle)
        return systemVM
    }

    /// Get_VMM_Reenter_Count (0006h): ECX.
    public func getVMMReenterCount() -> UInt32 {
        note(ordinal: VMMServiceOrdinal.getVMMReenterCount)
        return reenterCount
    }

    /// Begin_Reentrant_Execution (0007h): returns the old count (ECX) and sets it to 0 so
    /// synchronous services may be called. Pair with `endReentrantExecution`.
    public func beginReentrantExecution() -> UInt32 {
        note(ordinal: VMMServiceOrdinal.beginReentrantExecution)
        return beginReentrant()
    }

    /// End_Reentrant_Execution (0008h): restores the count Begin_Reentrant_Execution returned.
    public func endReentrantExecution(_ count: UInt32) {
        note(ordinal: VMMServiceOrdinal.endReentrantExecution)
        endReentrant(count)
    }

    func beginReentrant() -> UInt32 {
        let old = reenterCount
        reenterCount = 0
        reentrantDepth += 1
        return old
    }

    func endReentrant(_ count: UInt32) {
        guard reentrantDepth > 0 else {
            diagnostics.append(.unbalancedReentrantExecution)
            return
        }
        reentrantDepth -= 1
        reenterCount = count
    }

    /// Out_Debug_String (00C2h) with a Swift string. (The debug VMM's `#EAX`-style escapes are not
    /// interpreted.)
    public func outDebugString(_ string: String) {
        note(ordinal: VMMServiceOrdinal.outDebugString)
        debugLog += string
    }

    /// Out_Debug_String (00C2h) with ESI = guest address of a NUL-terminated string.
    public func outDebugString(at address: UInt32) throws(VMMServiceError) {
        note(ordinal: VMMServiceOrdinal.outDebugString)
        debugLog += try readGuestString(address, service: "Out_Debug_String")
    }

    /// Out_Debug_Chr (00C3h): AL.
    public func outDebugChr(_ character: UInt8) {
        note(ordinal: VMMServiceOrdinal.outDebugChr)
        debugLog.unicodeScalars.append(Unicode.Scalar(character))
    }

    /// Fatal_Error_Handler (00BEh) from Swift: records the termination; the run ends. A fault handler
    /// calling it should return at once (dispatch then ends with `.terminated`).
    @discardableResult
    public func fatalErrorHandler(message: String, flags: UInt32 = 0) -> FatalErrorReport {
        note(ordinal: VMMServiceOrdinal.fatalErrorHandler)
        let report = FatalErrorReport(message: message, messageAddress: 0, flags: flags)
        termination = report
        return report
    }

    func fatalError(messageAddress: UInt32, flags: UInt32) -> FatalErrorReport {
        var message = ""
        if messageAddress != 0 {
            do {
                message = try readGuestString(messageAddress, service: "Fatal_Error_Handler")
            } catch {
                message = "<unreadable message at \(vmmHex(messageAddress, 8))>"
            }
        }
        let report = FatalErrorReport(message: message, messageAddress: messageAddress, flags: flags)
        termination = report
        return report
    }

    /// Reads a NUL-terminated string (bytes as Latin-1, at most 4096).
    func readGuestString(_ address: UInt32, service: String) throws(VMMServiceError) -> String {
        guard let memory = guestMemory else { throw .noGuestMemory(service: service) }
        var scalars = String.UnicodeScalarView()
        var a = address
        for _ in 0..<4096 {
            let b: UInt8
            do {
                b = try memory.readGuestByte(a)
            } catch {
                diagnostics.append(.badServiceArgument(service: service, detail: error.description))
                throw .badGuestPointer(service: service, error)
            }
            if b == 0 { break }
            scalars.append(Unicode.Scalar(b))
            a &+= 1
        }
        return String(scalars)
    }

    // MARK: - Hook_VMM_Fault / Unhook_VMM_Fault

    /// Hook_VMM_Fault (0081h) with a Swift handler: allocates the handler a host-area address and
    /// installs it at the head of `interrupt`'s chain.
    ///
    /// - Parameters:
    ///   - interrupt: EAX, the whole register: 02h (NMI) and anything above 4Fh are refused.
    ///   - name: shown in traces and violation reports.
    ///   - handler: the `FaultProc`.
    /// - Returns: the previous handler (ESI), nil when there was none (ESI = 0).
    /// - Throws: `.invalidFaultNumber` (carry set): nothing installed.
    @discardableResult
    public func hookVMMFault(_ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookVMMFault)
        return try hookHost(.vmm, interrupt, name: name, handler: handler)
    }

    func hookHost(_ chain: FaultChainKind, _ interrupt: UInt32, name: String, handler: @escaping FaultProc)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        let vector = try Self.validate(interrupt)
        guard let address = allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        return insert(chain, vector: vector, address: address, name: name, kind: .host(handler), tier: newHookTier,
                      owner: currentDevice)
    }

    /// Hook_VMM_Fault (0081h) with a handler address (ESI): a guest address, or one returned by
    /// `registerFaultHandler`/an earlier hook. Returns the previous handler (nil = none).
    @discardableResult
    public func hookVMMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress)
        throws(FaultHookError) -> FaultHandlerAddress?
    {
        note(ordinal: VMMServiceOrdinal.hookVMMFault)
        return try hook(interrupt: interrupt, address: address)
    }

    /// Unhook_VMM_Fault (011Bh, VMM 4.0+): removes the newest hook of `address` on `interrupt`; the
    /// hook that had it as previous now passes on to its previous. Throws `.notHooked` (carry set).
    public func unhookVMMFault(_ interrupt: UInt32, handlerAt address: FaultHandlerAddress) throws(FaultHookError) {
        note(ordinal: VMMServiceOrdinal.unhookVMMFault)
        try unhook(interrupt: interrupt, address: address)
    }

    /// Gives a Swift handler a host-area address without hooking it (hook it with
    /// `hookVMMFault(_:handlerAt:)`, possibly on several vectors). Not a VMM service.
    public func registerFaultHandler(name: String, handler: @escaping FaultProc) throws(FaultHookError)
        -> FaultHandlerAddress
    {
        guard let a = allocateSlot(name: name, kind: .host(handler)) else { throw .hostAreaExhausted }
        return a
    }

    /// The Hook_VMM_Fault chain for `vector`, newest (first visited) first.
    public func faultChain(_ vector: UInt8) -> [FaultChainEntry] {
        faultChain(.vmm, vector)
    }

    /// The `chain` (VMM, PM or V86) for `vector`, newest (first visited) first.
    public func faultChain(_ chain: FaultChainKind, _ vector: UInt8) -> [FaultChainEntry] {
        var out: [FaultChainEntry] = []
        var cursor = heads[ChainKey(chain: chain, vector: vector)]
        while let i = cursor, out.count <= records.count {
            let r = records[i]
            out.append(FaultChainEntry(address: r.address, name: r.name, tier: r.tier, kind: r.kind.label,
                                       previous: r.previousAddress, owner: r.owner.map { devices[$0].device.name }))
            cursor = r.previousRecord
        }
        return out
    }

    /// The name of the handler at `address` (host slot, named guest handler), if known.
    public func handlerName(at address: FaultHandlerAddress) -> String? {
        if let s = slot(at: address) { return s.name }
        return guestHandlerNames[address]
    }

    /// Whether `address` is a host handler's (a Swift or VMM handler slot in use).
    public func isHostHandler(_ address: FaultHandlerAddress) -> Bool { slot(at: address) != nil }

    static func validate(_ interrupt: UInt32) throws(FaultHookError) -> UInt8 {
        guard interrupt != 0x02, interrupt <= 0x4F else { throw .invalidFaultNumber(interrupt) }
        return UInt8(interrupt)
    }

    var newHookTier: FaultHookTier { ownHandlersInstalled ? .postCriticalInit : .criticalInit }

    func hook(interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError) -> FaultHandlerAddress? {
        try hook(.vmm, interrupt: interrupt, address: address)
    }

    func hook(_ chain: FaultChainKind, interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError)
        -> FaultHandlerAddress?
    {
        let vector = try Self.validate(interrupt)
        guard address.rawValue != 0 else { throw .nullHandler }
        let name: String
        let kind: FaultHandlerKind
        if let s = slot(at: address) {
            name = s.name
            kind = s.kind
        } else {
            name = guestHandlerNames[address] ?? currentDevice.map { devices[$0].device.name } ?? "guest handler"
            kind = .guest(address)
        }
        return insert(chain, vector: vector, address: address, name: name, kind: kind, tier: newHookTier,
                      owner: currentDevice)
    }

    func unhook(interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError) {
        try unhook(.vmm, interrupt: interrupt, address: address)
    }

    func unhook(_ chain: FaultChainKind, interrupt: UInt32, address: FaultHandlerAddress) throws(FaultHookError) {
        let vector = try Self.validate(interrupt)
        var cursor = heads[ChainKey(chain: chain, vector: vector)]
        var steps = 0
        while let i = cursor, steps <= records.count {
            if records[i].address == address {
                unlink(i)
                return
            }
            cursor = records[i].previousRecord
            steps += 1
        }
        throw .notHooked(interrupt: interrupt, handler: address)
    }

    func insert(_ chain: FaultChainKind, vector: UInt8, address: FaultHandlerAddress, name: String,
                kind: FaultHandlerKind, tier: FaultHookTier, owner: Int?) -> FaultHandlerAddress? {
        let key = ChainKey(chain: chain, vector: vector)
        let head = heads[key]
        let previous = head.map { records[$0].address }
        records.append(HookRecord(chain: chain, vector: vector, address: address, name: name, kind: kind, tier: tier,
                                  previousAddress: previous, previousRecord: head, owner: owner, active: true))
        heads[key] = records.count - 1
        return previous
    }

    /// The newest handler of `chain` for `vector` (its head), nil when the chain is empty.
    func chainHead(_ chain: FaultChainKind, _ vector: UInt8) -> FaultHandlerAddress? {
        heads[ChainKey(chain: chain, vector: vector)].map { records[$0].address }
    }

    /// Unhook semantics: the newer hook whose previous is `index` takes over `index`'s previous.
    func unlink(_ index: Int) {
        let r = records[index]
        let key = ChainKey(chain: r.chain, vector: r.vector)
        if heads[key] == index {
            heads[key] = r.previousRecord
        } else if let newer = records.indices.first(where: { records[$0].active && records[$0].previousRecord == index }) {
            records[newer].previousRecord = r.previousRecord
            records[newer].previousAddress = r.previousAddress
            if case let .guest(a) = records[newer].kind {
                guestCallout?.guestHookRelinked(chain: r.chain, handler: a, vector: r.vector,
                                                newPrevious: r.previousAddress)
            }
        }
        records[index].active = false
    }

    func allocateSlot(name: String, kind: FaultHandlerKind) -> FaultHandlerAddress? {
        guard UInt32(slots.count) < VMMHostArea.allocatableSlotCount,
              let a = VMMHostArea.slotAddress(UInt32(slots.count)) else { return nil }
        slots.append(HostSlot(name: name, kind: kind))
        return a
    }

    func slot(at address: FaultHandlerAddress) -> HostSlot? {
        let a = address.rawValue
        guard VMMHostArea.isHandlerSlot(a), (a - VMMHostArea.handlerBase) % VMMHostArea.slotSize == 0 else { return nil }
        let n = Int((a - VMMHostArea.handlerBase) / VMMHostArea.slotSize)
        if n < slots.count { return slots[n] }
        if address == VMMHostArea.defaultNMIHandler { return HostSlot(name: "VMM", kind: .vmmDefault) }
        if ownHandlersInstalled, VMMHostArea.ownHandlerOwner(address) != nil {
            return HostSlot(name: "VMM", kind: .vmmDefault)
        }
        return nil
    }

    // MARK: - Fault dispatch

    /// Dispatches one ring-0 fault through the Hook_VMM_Fault chain of `vector`.
    ///
    /// Each handler is called as `call [FaultProc]` is: with `entryRegisters` except EBX = current VM,
    /// EBP = `frameAddress` and IF clear, interrupts disabled and the reentrancy count raised by one.
    /// A handler that passes on hands its registers to the previous handler; the walk stops at the
    /// first that processes. If the last handler passes on, the fault is unhandled and the result
    /// carries the Windows fatal-exception report. `frame` is updated with what handlers changed.
    ///
    /// - Throws: `.reentrantDispatch` when called from inside a handler; `.registerViolation` in
    ///   strict mode; `.noGuestCallout`/`.guestCallout` when a guest handler cannot be run.
    public func dispatchFault(vector: UInt8, frame: inout ClientRegisters, frameAddress: UInt32,
                              entryRegisters: HandlerRegisters) throws(FaultDispatchError) -> FaultDispatchOutcome
    {
        try dispatchFault(.vmm, vector: vector, frame: &frame, frameAddress: frameAddress,
                          entryRegisters: entryRegisters)
    }

    /// Dispatches one fault through the chain of `vector` that belongs to the mode the fault came
    /// from: `.vmm` (ring 0, Hook_VMM_Fault), `.pm` (a protected-mode application, Hook_PM_Fault) or
    /// `.v86` (virtual-8086 mode, Hook_V86_Fault). Only that chain's handlers are visited.
    ///
    /// Handlers are called and checked exactly as for `dispatchFault(vector:frame:frameAddress:entryRegisters:)`.
    /// An unprocessed fault ends with `.unhandled`: for `.vmm` the ring-0 fatal-exception report,
    /// for `.pm`/`.v86` the application report (see `FatalExceptionReport.init(vector:frame:chain:)`).
    /// The trace's `chain` says which chain ran.
    public func dispatchFault(_ chain: FaultChainKind, vector: UInt8, frame: inout ClientRegisters,
                              frameAddress: UInt32, entryRegisters: HandlerRegisters)
        throws(FaultDispatchError) -> FaultDispatchOutcome
    {
        var trace: FaultDispatchTrace? = FaultDispatchTrace(
            vector: vector, frameAddress: frameAddress,
            entryFrame: recordsTraces ? FrameSnapshot(frame) : FrameSnapshot.empty, visits: [], outcome: "", chain: chain)
        let (result, registers) = try walkChain(chain, vector: vector, frame: &frame, frameAddress: frameAddress,
                                                entryRegisters: entryRegisters, trace: &trace)
        return FaultDispatchOutcome(result: result,
                                    trace: trace ?? Self.minimalTrace(chain, vector: vector, frameAddress: frameAddress),
                                    registers: registers)
    }

    /// The trace an error carries when none was being recorded: the fault and the chain only.
    static func minimalTrace(_ chain: FaultChainKind, vector: UInt8, frameAddress: UInt32) -> FaultDispatchTrace {
        FaultDispatchTrace(vector: vector, frameAddress: frameAddress, entryFrame: FrameSnapshot.empty, visits: [],
                           outcome: "", chain: chain)
    }

    /// The chain walk behind `dispatchFault`. With `trace` nil (the machine's path for faults it
    /// does not list, when `recordsTraces` is off) no trace is built at all; a trace value costs
    /// copies and releases of its arrays and strings on every fault. Errors still carry one.
    func walkChain(_ chain: FaultChainKind, vector: UInt8, frame: inout ClientRegisters, frameAddress: UInt32,
                   entryRegisters: HandlerRegisters, trace: inout FaultDispatchTrace?)
        throws(FaultDispatchError) -> (FaultDispatchResult, HandlerRegisters)
    {
        if let active = activeVector { throw .reentrantDispatch(vector: vector, activeVector: active) }
        let saved = enterHandlerContext(vector: vector)
        defer { leaveHandlerContext(saved) }

        // Asked once: testing the optional trace in the loop copied it on every visit.
        let tracing = trace != nil
        let full = recordsTraces && tracing
        func errorTrace(_ outcome: String) -> FaultDispatchTrace {
            var t = trace ?? Self.minimalTrace(chain, vector: vector, frameAddress: frameAddress)
            t.outcome = outcome
            return t
        }
        var registers = entryRegisters
        registers.ebx = currentVM
        registers.ebp = frameAddress
        registers.eflags = (registers.eflags & ~EFlags.if) | EFlags.reserved1

        var cursor = heads[ChainKey(chain: chain, vector: vector)]
        var steps = 0
        // One context for the whole walk (each host handler gets its own address and previous in
        // it): making one per visit retained and released the VMM every time.
        var context = FaultHandlerContext(vector: vector, address: FaultHandlerAddress(rawValue: 0), previous: nil,
                                          vmm: self)
        while let index = cursor, steps <= records.count {
            steps += 1
            // The record's fields are read where they are needed rather than copying the whole
            // record (its name and kind hold references: a copy per visit costs retains). What
            // steers the walk is read before the handler runs, which may hook or unhook.
            let address = records[index].address
            let previousAddress = records[index].previousAddress
            let previousRecord = records[index].previousRecord
            var record: HookRecord { records[index] }  // records are only ever appended to
            let before = registers
            let frameBefore = frame
            var after = registers
            if currentHandlerLabel != nil { currentHandlerLabel = nil }
            currentHandlerRecord = index
            if !currentVisitCalls.isEmpty { currentVisitCalls = [] }
            let terminationsBefore = terminationCount
            let disposition: FaultDisposition
            // Switched on in place: binding a copy of the kind first cost a second retain of the
            // handler's closure on every visit.
            switch records[index].kind {
            case let .host(proc):
                context.address = address
                context.previous = previousAddress
                do {
                    disposition = try proc(&after, &frame, context)
                } catch {
                    throw .handlerThrew(name: record.name, handler: address, message: "\(error)",
                                        trace: errorTrace("error: \(record.name) threw \(error)"))
                }
            case .vmmDefault:
                disposition = ownPolicy(chain).action(vector, &frame) ? .processed : .passedOn
            case let .guest(address):
                guard let callout = guestCallout else {
                    throw .noGuestCallout(handler: address, trace: errorTrace("error: no guest callout for \(address)"))
                }
                let call = GuestFaultHandlerCall(vector: vector, handler: address, previous: previousAddress,
                                                 registers: before, frameAddress: frameAddress, role: .fault(chain))
                do {
                    let r = try callout.callGuestFaultHandler(call, frame: &frame)
                    after = r.registers
                    disposition = r.disposition
                } catch {
                    throw .guestCallout(error, handler: address, trace: errorTrace("error: \(error)"))
                }
            }

            // Nothing changed is the common case (every handler that passes on): no call for it.
            let violations = before.sameValues(as: after) ? [] :
                Self.checkRules(before: before, after: after, disposition: disposition,
                                name: record.name, address: address)
            if tracing, full || !violations.isEmpty || !currentVisitCalls.isEmpty {
                trace?.visits.append(FaultHandlerVisit(
                    address: address, name: record.name, tier: record.tier, kind: record.kind.label,
                    disposition: disposition,
                    registerChanges: ValueChange.diff(before.namedValues, after.namedValues),
                    frameChanges: ValueChange.diff(frameBefore.namedFields, frame.namedFields),
                    violations: violations, serviceCalls: currentVisitCalls))
            }
            if !violations.isEmpty { diagnostics.append(contentsOf: violations.map { .registerViolation($0) }) }

            if terminationCount != terminationsBefore, let t = termination {
                trace?.outcome = "terminated by \(record.name): \(t)"
                return (.terminated(t), after)
            }
            if configuration.strictRegisterRules, let v = violations.first {
                throw .registerViolation(v, trace: errorTrace("error: \(v)"))
            }
            if disposition == .processed {
                if full { trace?.outcome = "processed by \(record.name) at \(address)" }
                return (.processed(by: address, name: record.name), after)
            }
            registers = after
            cursor = previousRecord
        }
        let report = chain == .vmm ? fatalExceptionReport(vector: vector, frame: frame)
            : FatalExceptionReport(vector: vector, frame: frame, chain: chain)
        trace?.outcome = "unhandled: \(report.message)"
        return (.unhandled(report), registers)
    }

    /// What a handler run changes in the VMM's state, to restore afterwards.
    struct HandlerContext {
        var interrupts: Bool
        var count: UInt32
        var depth: Int
    }

    /// Enters the state in which fault and IRQ handlers run: `vector` active, interrupts
    /// disabled, the reentrancy count raised by one.
    func enterHandlerContext(vector: UInt8) -> HandlerContext {
        let saved = HandlerContext(interrupts: interruptsEnabled, count: reenterCount, depth: reentrantDepth)
        activeVector = vector
        interruptsEnabled = false
        reenterCount += 1
        return saved
    }

    /// Leaves it again (the `defer` of every dispatch).
    func leaveHandlerContext(_ saved: HandlerContext) {
        activeVector = nil
        currentHandlerName = nil
        currentVisitCalls = []
        interruptsEnabled = saved.interrupts
        reenterCount = saved.count
        reentrantDepth = saved.depth
    }

    /// The Windows fatal-exception report for `frame` (see `FatalExceptionReport`).
    public func fatalExceptionReport(vector: UInt8, frame: ClientRegisters) -> FatalExceptionReport {
        let eip = frame.eip
        for entry in devices {
            if let r = entry.device.codeRange, r.contains(eip) {
                return FatalExceptionReport(vector: vector, frame: frame,
                                            device: (entry.device.name, entry.device.deviceID, r.lowerBound))
            }
        }
        if let r = configuration.vmmCodeRange, r.contains(eip) {
            return FatalExceptionReport(vector: vector, frame: frame,
                                        device: ("VMM", VMMServiceTable.vmmDeviceID, r.lowerBound))
        }
        return FatalExceptionReport(vector: vector, frame: frame, device: nil)
    }

    /// The register rules of Hook_VMM_Fault (see `RegisterViolation`).
    static func checkRules(before: HandlerRegisters, after: HandlerRegisters, disposition: FaultDisposition,
                           name: @autoclosure () -> String, address: FaultHandlerAddress) -> [RegisterViolation] {
        let arithmetic = EFlags.cf | EFlags.pf | EFlags.af | EFlags.zf | EFlags.sf | EFlags.of
        // Fast paths (no allocation): nothing changed, or only what a processing handler may change.
        if before == after { return [] }
        if disposition == .processed, before.ebp == after.ebp, before.esp == after.esp, before.cs == after.cs,
           before.ds == after.ds, before.es == after.es, before.fs == after.fs, before.gs == after.gs,
           before.ss == after.ss, (before.eflags ^ after.eflags) & ~arithmetic == 0 {
            return []
        }
        let mayChange: Set<String> = ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI"]
        let name = name()
        var out: [RegisterViolation] = []
        for change in ValueChange.diff(before.namedValues, after.namedValues) {
            let broken: Bool
            switch disposition {
            case .passedOn:
                broken = true
            case .processed:
                if change.name == "EFLAGS" {
                    broken = (change.old ^ change.new) & ~arithmetic != 0
                } else {
                    broken = !mayChange.contains(change.name)
                }
            }
            if broken {
                out.append(RegisterViolation(handlerName: name, handlerAddress: address, register: change.name,
                                             old: change.old, new: change.new, disposition: disposition))
            }
        }
        return out
    }
}
