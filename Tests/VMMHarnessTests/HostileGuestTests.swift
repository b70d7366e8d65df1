import Foundation
import Testing
@testable import VMMHarness

/// Guests that are wrong by design: every one ends with the expected typed result, within its
/// timeout, on every backend this host has.
@Suite(.enabled(if: TestSupport.toolchain != nil, "needs the Swift toolchain's clang and ld.lld to assemble guests"))
struct HostileGuestTests {
    func run(_ source: String, on backend: BackendKind, timeout: Double = 5, strict: Bool = false,
             prepare: (VirtualMachineManager) throws(HarnessError) -> Void = { _ throws(HarnessError) in }) throws -> RunReport {
        try TestSupport.requireBackend(backend, needs: [])
        var c = RunConfiguration()
        c.backend = backend == .kvm ? .kvm : .interpreter
        c.options.timeout = timeout
        c.strictRegisterRules = strict
        let image = try GuestAssembler.assemble(source: "#include \"vmm.inc\"\n    .globl _start\n" + source)
        return try Harness.run(Scenario(image: image), configuration: c, prepare: prepare)
    }

    @Test(arguments: BackendKind.allCases)
    func runawayGuestTimesOut(backend: BackendKind) throws {
        let r = try run("_start:\n    jmp _start\n", on: backend, timeout: 0.5)
        #expect(r.exit.reason == .timeout && r.exit.exitCode == 4)
    }

    @Test(arguments: BackendKind.allCases)
    func guestThatExitsConstantlyStillTimesOut(backend: BackendKind) throws {
        // Every iteration exits to the host (debug console), so no instruction budget runs out.
        let r = try run("_start:\n    outb %al, $0xE9\n    jmp _start\n", on: backend, timeout: 0.5)
        #expect(r.exit.reason == .timeout)
    }

    @Test(arguments: BackendKind.allCases)
    func guestFaultHandlerThatNeverReturnsTimesOut(backend: BackendKind) throws {
        let src = """
                Declare_Virtual_Device LOOPER, 1, 0, ctl, 0x7B01, Undefined_Init_Order
            ctl:
                cmpl $Device_Init, %eax
                jne 1f
                movl $6, %eax
                movl $handler, %esi
                VMMcall Hook_VMM_Fault
            1:  clc
                ret
            handler:
                jmp handler
            _start:
                ud2
                hlt
            """
        let r = try run(src, on: backend, timeout: 0.5)
        #expect(r.exit.reason == .timeout)
    }

    @Test(arguments: BackendKind.allCases)
    func tripleFaultIsAShutdownNotACrash(backend: BackendKind) throws {
        // An IDT with limit 0: the #UD cannot be delivered (#GP), nor that (#DF), nor that: shutdown.
        let src = """
            _start:
                lidt idtr
                ud2
                hlt
                .balign 4
            idtr:
                .word 0
                .long 0
            """
        let r = try run(src, on: backend)
        #expect(r.exit.reason == .shutdown && r.exit.exitCode == 6, "\(r.exit.message)")
    }

    @Test(arguments: BackendKind.allCases)
    func readFromMissingPhysicalMemoryEndsTheRun(backend: BackendKind) throws {
        let r = try run("_start:\n    movl 0xFFFFFFFC, %eax\n    hlt\n", on: backend)
        #expect(r.exit.reason == .mmio && r.exit.exitCode == 6)
        #expect(r.exit.message.contains("FFFFFFFC"))
    }

    @Test(arguments: BackendKind.allCases)
    func guestThatLiesAboutItsFrame(backend: BackendKind) throws {
        // Write to the #UD stub's port directly, with ESP pointing past the end of guest memory.
        let r = try run("_start:\n    movl $0xFFFFFFF0, %esp\n    outb %al, $0x86\n    hlt\n", on: backend)
        #expect(r.exit.reason == .invalidResume && r.exit.exitCode == 6)
        #expect(r.exit.message.contains("outside guest memory"))
    }

    @Test(arguments: BackendKind.allCases)
    func jumpIntoTheHostAreaOutsideACall(backend: BackendKind) throws {
        let r = try run("_start:\n    jmp 0x90000\n", on: backend)
        #expect(r.exit.reason == .invalidResume)
    }

    @Test(arguments: BackendKind.allCases)
    func handlerThatWritesABadCSIsReportedOnResume(backend: BackendKind) throws {
        let r = try run("_start:\n    ud2\n    hlt\n", on: backend) { vmm throws(HarnessError) in
            do {
                _ = try vmm.hookVMMFault(6, name: "BADCS") { _, frame, _ in
                    frame.cs = 0x30          // a data segment
                    frame.eip &+= 2
                    return .processed
                }
            } catch { throw .invalidArgument("\(error)") }
        }
        #expect(r.exit.reason == .invalidResume && r.exit.exitCode == 6)
        #expect(r.exit.message.contains("CS = 0030h"), "\(r.exit.message)")
    }

    @Test(arguments: BackendKind.allCases)
    func outDebugStringWithAPointerOutsideMemory(backend: BackendKind) throws {
        let r = try run("_start:\n    movl $0xFFFFFF00, %esi\n    VMMcall Out_Debug_String\n    hlt\n", on: backend)
        #expect(r.exit.reason == .fatalError && r.exit.exitCode == 3)
        #expect(r.exit.message.contains("Out_Debug_String") && r.exit.message.contains("FFFFFF00"), "\(r.exit.message)")
    }

    @Test(arguments: BackendKind.allCases)
    func vmmcallWhoseServiceDwordIsOutsideMemory(backend: BackendKind) throws {
        // INT 20h as the last two bytes of guest memory: the dword after it does not exist.
        let r = try run("""
            _start:
                movl $0xFFFFFE, %edi
                movw $0x20CD, (%edi)
                jmp *%edi
            """, on: backend)
        #expect(r.exit.reason == .fatalError, "\(r.exit.message)")
        #expect(r.exit.message.contains("outside guest memory"))
    }
}

extension HostileGuestTests {
    struct HandlerBug: Error, CustomStringConvertible {
        var description: String { "table index out of range" }
    }

    @Test(arguments: BackendKind.allCases)
    func swiftHandlerThatThrowsEndsTheRunNamingIt(backend: BackendKind) throws {
        let r = try run("_start:\n    ud2\n    hlt\n", on: backend) { vmm throws(HarnessError) in
            do {
                _ = try vmm.hookVMMFault(6, name: "THROWER") { _, _, _ in throw HandlerBug() }
            } catch { throw .invalidArgument("\(error)") }
        }
        #expect(r.exit.reason == .handlerError && r.exit.exitCode == 7)
        #expect(r.exit.message.contains("THROWER") && r.exit.message.contains("table index out of range"), "\(r.exit.message)")
    }
}

extension HostileGuestTests {
    @Test(arguments: BackendKind.allCases)
    func controlProcedureThatHangsOnShutdownIsBounded(backend: BackendKind) throws {
        let src = """
                Declare_Virtual_Device HANGX, 1, 0, ctl, 0x7B02, Undefined_Init_Order
            ctl:
                cmpl $System_Exit, %eax
                jne 1f
            2:  jmp 2b
            1:  clc
                ret
            _start:
                hlt
            """
        let r = try run(src, on: backend, timeout: 0.5)
        #expect(r.exit.reason == .halt)
        #expect(r.notes.contains { $0.contains("HANGX") && $0.contains("did not return") }, "\(r.notes)")
    }
}
