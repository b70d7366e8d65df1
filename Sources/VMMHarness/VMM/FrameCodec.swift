/// A fault or interrupt the guest's IDT stub handed to the host: the frame it built and where.
public struct FaultEvent: Sendable {
    /// Interrupt number 00h–5Fh.
    public var vector: UInt8
    /// The full frame (`Client_Reg_Struc`) as the host completed it.
    public var frame: ClientRegisters
    /// Guest-linear address of the frame (what EBP points at for guest fault handlers).
    public var frameAddress: UInt32
    /// Privilege level the fault came from (CS.RPL of the interrupted code; 3 for V86).
    public var ring: UInt8
    /// The vCPU state at the stub's exit (inside the stub, ring 0).
    public var stubState: CPUState

    public init(vector: UInt8, frame: ClientRegisters, frameAddress: UInt32, ring: UInt8, stubState: CPUState) {
        self.vector = vector; self.frame = frame; self.frameAddress = frameAddress; self.ring = ring
        self.stubState = stubState
    }

    /// How the frame lies in guest memory.
    public var layout: ClientFrameLayout { ClientFrameLayout(frame) }
}

/// How a `Client_Reg_Struc` lies in guest memory, which depends on where the fault came from.
///
/// The one table of slots: `ClientRegisters.Offset` gives every field's offset from EBP in the
/// full layout; the re-entrant layout keeps 00h–2Fh at EBP and moves DS, ES, FS, GS to the
/// `segmentSlotsBelow` dwords under EBP (EBP-4, -8, -0Ch, -10h), with Client_ESP and Client_SS
/// not in memory at all (the interrupted ring-0 stack is the stub's: ESP = EBP + 30h).
public enum ClientFrameLayout: Sendable, Equatable {
    /// A fault from ring 0: the VMM's re-entrant fault stack frame.
    case reentrant
    /// A fault from ring 3 or V86 mode: the whole 6Ch-byte structure at EBP.
    case full

    /// The layout a frame with these CS and EFLAGS values uses.
    @inline(__always)
    public init(_ frame: ClientRegisters) {
        self = frame.cs & 3 != 0 || frame.eflags & EFlags.vm != 0 ? .full : .reentrant
    }

    /// Bytes of the structure that lie at EBP and above.
    public var bytesAtFrame: Int {
        self == .full ? ClientRegisters.size : ClientRegisters.stubFrameSize
    }

    /// Where DS, ES, FS and GS lie relative to EBP, in that order (the re-entrant layout's
    /// slots below EBP; the full layout's Client_DS ... Client_GS).
    public var segmentSlots: (ds: Int32, es: Int32, fs: Int32, gs: Int32) {
        switch self {
        case .reentrant: return (-4, -8, -12, -16)
        case .full:
            return (Int32(ClientRegisters.Offset.ds), Int32(ClientRegisters.Offset.es),
                    Int32(ClientRegisters.Offset.fs), Int32(ClientRegisters.Offset.gs))
        }
    }

    /// Bytes under EBP every frame reserves (the re-entrant layout's segment slots; a full frame
    /// leaves them unused, so guest handlers get the same stack either way).
    public static let bytesBelowFrame = 16
}

/// Reads, writes back and resumes the `Client_Reg_Struc` frames the runtime's IDT stubs build
/// (the DDK's "VMM re-entrant fault stack frame" for ring 0, the whole structure otherwise),
/// through the guest's page tables. Reading has no side effect on guest memory.
public struct FrameCodec {
    public let memory: GuestMemory

    public init(memory: GuestMemory) { self.memory = memory }

    /// The physical address of the frame at guest-linear `linear`, with its 10h bytes below,
    /// under `pagingState` (identity without paging).
    func physicalFrame(_ linear: UInt32, pagingState: CPUState) throws(HarnessError) -> UInt32 {
        let below = UInt32(ClientFrameLayout.bytesBelowFrame)
        guard let p = PageWalker.contiguous(linear &- below, count: ClientRegisters.size + Int(below), state: pagingState,
                                            memory: memory) else {
            throw .guestProtocol("the frame at linear \(hex(linear)) is not mapped by the guest's page tables")
        }
        return p &+ below
    }

    /// The fault the stub for `vector` reported, from the vCPU state at its exit (ring 0, ESP at
    /// the frame). Completes the frame from the CPU state: Client_ESP/SS (pushed by the CPU for an
    /// outer-ring fault, the stub's stack otherwise) and DS–GS (pushed by the CPU in V86 mode,
    /// the stub's selectors otherwise). Validates everything the guest supplied.
    public func readFault(vector: UInt8, stubState st: CPUState) throws(HarnessError) -> FaultEvent {
        guard st.cpl == 0, st.cs.selector == Selectors.ring0Code else {
            throw .guestProtocol("fault port written from \(hex(st.cs.selector, width: 4)):\(hex(st.eip)), not from a ring-0 stub")
        }
        let linear = st.esp &+ st.ss.base
        let addr: UInt32
        do { addr = try physicalFrame(linear, pagingState: st) } catch {
            throw .guestProtocol("the stub's frame at linear \(hex(linear)) is not mapped by the guest's page tables")
        }
        var frame = ClientRegisters()
        do {
            try frame.load(from: memory, at: addr, count: ClientRegisters.stubFrameSize)
            typealias O = ClientRegisters.Offset
            let fromV86 = frame.eflags & EFlags.vm != 0
            let ring: UInt8 = fromV86 ? 3 : UInt8(frame.cs & 3)
            if ring != 0 {
                // The CPU pushed the outer stack (and, from V86, the data segments) above EFLAGS.
                frame.esp = try memory.read32(addr &+ UInt32(O.esp))
                frame.ss = UInt16(truncatingIfNeeded: try memory.read32(addr &+ UInt32(O.ss)))
            } else {
                frame.esp = st.esp &+ UInt32(ClientRegisters.stubFrameSize)
                frame.ss = st.ss.selector
            }
            if fromV86 {
                frame.es = UInt16(truncatingIfNeeded: try memory.read32(addr &+ UInt32(O.es)))
                frame.ds = UInt16(truncatingIfNeeded: try memory.read32(addr &+ UInt32(O.ds)))
                frame.fs = UInt16(truncatingIfNeeded: try memory.read32(addr &+ UInt32(O.fs)))
                frame.gs = UInt16(truncatingIfNeeded: try memory.read32(addr &+ UInt32(O.gs)))
            } else {
                frame.ds = st.ds.selector; frame.es = st.es.selector; frame.fs = st.fs.selector; frame.gs = st.gs.selector
            }
            return FaultEvent(vector: vector, frame: frame, frameAddress: linear, ring: ring, stubState: st)
        } catch {
            throw .guestProtocol("the stub's frame at \(hex(addr)) is outside guest memory")
        }
    }

    /// Writes `frame` into guest memory at guest-linear `linear` in its layout: the whole
    /// structure for a fault from ring 3 or V86, the re-entrant frame (00h–2Fh) with DS, ES, FS,
    /// GS below it for a fault from ring 0.
    public func store(_ frame: ClientRegisters, at linear: UInt32, pagingState: CPUState) throws(HarnessError) {
        let address = try physicalFrame(linear, pagingState: pagingState)
        let layout = ClientFrameLayout(frame)
        do {
            try frame.store(to: memory, at: address, count: layout.bytesAtFrame)
            if layout == .reentrant {
                let s = layout.segmentSlots
                try memory.write32(address &+ UInt32(bitPattern: s.ds), UInt32(frame.ds))
                try memory.write32(address &+ UInt32(bitPattern: s.es), UInt32(frame.es))
                try memory.write32(address &+ UInt32(bitPattern: s.fs), UInt32(frame.fs))
                try memory.write32(address &+ UInt32(bitPattern: s.gs), UInt32(frame.gs))
            }
        } catch {
            throw .guestProtocol("the frame at \(hex(address)) does not fit guest memory")
        }
    }

    /// Reads back a frame `store` wrote (after guest code may have changed it). Fields not in
    /// guest memory (Client_ESP and Client_SS of a re-entrant frame) come from `template`, whose
    /// CS and EFLAGS also pick the layout.
    public func load(at linear: UInt32, template: ClientRegisters, pagingState: CPUState) throws(HarnessError) -> ClientRegisters {
        let address = try physicalFrame(linear, pagingState: pagingState)
        let layout = ClientFrameLayout(template)
        do {
            // Field by field over the template (no buffers: this is on every guest handler's path).
            var f = template
            try f.load(from: memory, at: address, count: layout.bytesAtFrame)
            if layout == .reentrant {
                let s = layout.segmentSlots
                f.ds = UInt16(truncatingIfNeeded: try memory.read32(address &+ UInt32(bitPattern: s.ds)))
                f.es = UInt16(truncatingIfNeeded: try memory.read32(address &+ UInt32(bitPattern: s.es)))
                f.fs = UInt16(truncatingIfNeeded: try memory.read32(address &+ UInt32(bitPattern: s.fs)))
                f.gs = UInt16(truncatingIfNeeded: try memory.read32(address &+ UInt32(bitPattern: s.gs)))
            }
            return f
        } catch {
            throw .guestProtocol("the frame at \(hex(address)) does not fit guest memory")
        }
    }

    /// EFLAGS bits a frame may set on resume (no VM: V86 is re-entered only from a frame that
    /// came from V86; no RF/VIF/VIP).
    public static let resumableFlags: UInt32 = 0x0024_7FD7

    /// The CPU state the guest continues with from `frame`, starting from the stub's state
    /// (control registers, tables, TR): the frame's registers, with every segment register
    /// reloaded from the GDT with the checks IRET would make (V86: real-mode style segments).
    public func resumeState(from frame: ClientRegisters, stubState: CPUState) throws(SegmentLoadError) -> CPUState {
        var s = stubState
        s.eax = frame.eax; s.ebx = frame.ebx; s.ecx = frame.ecx; s.edx = frame.edx
        s.esi = frame.esi; s.edi = frame.edi; s.ebp = frame.ebp
        if frame.eflags & EFlags.vm != 0 {
            s.eip = frame.eip & 0xFFFF
            s.esp = frame.esp & 0xFFFF
            s.eflags = (frame.eflags & Self.resumableFlags) | EFlags.vm | EFlags.reserved1
            s.cs = .v86(selector: frame.cs); s.ss = .v86(selector: frame.ss); s.ds = .v86(selector: frame.ds)
            s.es = .v86(selector: frame.es); s.fs = .v86(selector: frame.fs); s.gs = .v86(selector: frame.gs)
            return s
        }
        s.eip = frame.eip
        s.esp = frame.esp
        s.eflags = (frame.eflags & Self.resumableFlags) | EFlags.reserved1
        let loader = SegmentLoader(memory: memory, gdtr: s.gdtr)
        let cpl = UInt8(frame.cs & 3)
        s.cs = try loader.loadCode(frame.cs)
        s.ss = try loader.loadStack(frame.ss, cpl: cpl)
        // DS, ES, FS and GS usually hold one selector: the same load with the same CPL gives the
        // same result, so each distinct selector is loaded (and checked) once.
        s.ds = try loader.loadData(frame.ds, cpl: cpl, name: "DS")
        s.es = frame.es == frame.ds ? s.ds : try loader.loadData(frame.es, cpl: cpl, name: "ES")
        s.fs = frame.fs == frame.ds ? s.ds : frame.fs == frame.es ? s.es : try loader.loadData(frame.fs, cpl: cpl, name: "FS")
        s.gs = frame.gs == frame.ds ? s.ds : frame.gs == frame.fs ? s.fs : try loader.loadData(frame.gs, cpl: cpl, name: "GS")
        return s
    }

    /// The frame's fields by their VMM.INC names (for reports).
    public static func namedFields(_ f: ClientRegisters) -> [String: UInt32] {
        ["Client_EAX": f.eax, "Client_EBX": f.ebx, "Client_ECX": f.ecx, "Client_EDX": f.edx,
         "Client_ESI": f.esi, "Client_EDI": f.edi, "Client_EBP": f.ebp, "Client_Error": f.error,
         "Client_EIP": f.eip, "Client_CS": UInt32(f.cs), "Client_EFlags": f.eflags, "Client_ESP": f.esp,
         "Client_SS": UInt32(f.ss), "Client_ES": UInt32(f.es), "Client_DS": UInt32(f.ds),
         "Client_FS": UInt32(f.fs), "Client_GS": UInt32(f.gs)]
    }
}
