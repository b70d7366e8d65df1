/// The Windows 95/98 Virtual Machine Manager's fault-hook services on the host: the service table,
/// the Hook_VMM_Fault chains with their three tiers, devices and control messages, the register
/// and asynchronous-service rules, and fault dispatch with a trace. Pure logic: the machine calls
/// `dispatchFault` per ring-0 fault and `callService` per guest `VMMcall`.
///
/// Not thread-safe; the VMM is single-threaded, as in Windows.
///
/// The parts, one job each:
/// - `VMMConfiguration.swift`: configuration, version and phase.
/// - `HookStore.swift`: every hooked handler (`HookedHandler`: fault hooks, NMI handlers, NMI
///   events, IRQ handlers), the chain heads, insert/unlink, the host-area slots.
/// - `DeviceLifecycle.swift`: the device registry, boot, shutdown and control messages.
/// - `VMMServices.swift` (the service table), `VMMServiceCalls.swift` (`callService` and the Swift
///   faces), `FaultHookServices.swift` (Hook_*_Fault, Unhook_*_Fault, Get_Fault_Hook_Addrs).
/// - `HandlerInvoker.swift`: the one function that runs a handler of any kind in any role, and the
///   handler context; `RegisterRules.swift`: the register rules it applies.
/// - `FaultChainWalk.swift`, `NMIServices.swift`, `VirtualPIC.swift`: fault, NMI and IRQ dispatch.
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
    /// How the VMM is set up (version, strict rules, the VMM's own handlers, the service table).
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
    /// How often `termination` was set: a handler called Fatal_Error_Handler when it changed.
    @exclusivity(unchecked) var terminationCount = 0
    /// Where the VMM is in its life (the boot phase whose control message is being sent, running, ...).
    public internal(set) var phase: VMMPhase = .notBooted
    /// Control messages and boot/shutdown events, in order.
    public internal(set) var bootLog: [BootEvent] = []

    // The parts. Unchecked exclusivity on what dispatch touches on every fault (the store and
    // the dispatch state below): the VMM runs on one thread, and no access to these overlaps
    // another (no inout access to them is held across a handler call), so the runtime's dynamic
    // exclusivity checks only cost time (about a tenth of a fault round trip on the interpreter).

    /// The devices and which one's control procedure runs (DeviceLifecycle.swift).
    var devices = DeviceRegistry()
    /// Every hooked handler and the host-area slots (HookStore.swift).
    @exclusivity(unchecked) var store = HookStore()

    // Dispatch state (HandlerInvoker.swift).

    /// The vector being dispatched (fault, 02h for an NMI, 50h + n for IRQ n), nil outside dispatch.
    /// Reads and writes the vCPU's system registers (set by whoever attaches the VMM to a
    /// machine). Held weakly, as `guestCallout` is.
    public weak var systemRegisterPort: (any SystemRegisterPort)?
    @exclusivity(unchecked) var activeVector: UInt8?
    /// The vectors being dispatched now, outermost first (more than one: a fault inside a handler).
    @exclusivity(unchecked) var faultNesting: [UInt8] = []
    /// How deep faults inside fault handlers may nest before dispatch refuses
    /// (`FaultDispatchError.faultNestingTooDeep`).
    public static let maximumFaultNesting = 16
    /// The record of the handler running now; diagnostics name it (`currentHandlerName`).
    @exclusivity(unchecked) var currentHandlerRecord: Int?
    /// Services the running handler called.
    @exclusivity(unchecked) var currentVisitCalls: [ServiceCallRecord] = []
    /// Begin_Reentrant_Execution nesting.
    @exclusivity(unchecked) var reentrantDepth = 0
    /// Whether dispatches build their full trace (each visit's register and frame diffs, names,
    /// outcome text). The machine turns it off for faults it will not list in the report (the
    /// benchmark's loops), so the dispatch path allocates nothing; rule checks and diagnostics
    /// work either way.
    @exclusivity(unchecked) public var recordsTraces = true

    // NMI state (NMIServices.swift).

    /// Set while an NMI handler (not an event) runs: every service call is a violation.
    var nmiHandlerRunning = false
    /// The first service the running NMI handler called.
    var nmiServiceViolation: (service: String, handler: String?)?
    var nmiDispatchActive = false

    // Virtual PIC state (VirtualPIC.swift): a request bit per IRQ.
    @exclusivity(unchecked) var pendingIRQMask: UInt16 = 0

    public init(configuration: VMMConfiguration = VMMConfiguration()) {
        self.configuration = configuration
    }
}
