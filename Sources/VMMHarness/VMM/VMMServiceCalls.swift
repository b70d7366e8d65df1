// MARK: - Services: the table face and the Swift face

extension VirtualMachineManager {
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

    /// Records a call and applies the async-only rule (the debug VMM's report; the call still runs)
    /// and the NMI handlers' no-service rule.
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

    /// `note` for a Swift-face call by ordinal.
    func note(ordinal: UInt16) {
        if let s = configuration.services[ordinal] { note(s) }
    }

    /// Get_VMM_Version (0000h).
    public func getVMMVersion() -> VMMVersion {
        note(ordinal: VMMServiceOrdinal.getVMMVersion)
        return configuration.version
    }

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

    /// Fatal_Error_Handler's register face: ESI = message (0 = none), EAX = flags.
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
}
