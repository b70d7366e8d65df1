import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer's entry point for the Machine target (built with `-sanitize=fuzzer`, which supplies
/// `main`; see scripts/fuzz.sh).
@_cdecl("LLVMFuzzerTestOneInput")
public func machineFuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    MachineCase.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// Runs once before the first input: the machine must never touch /dev/kvm here (the
/// interpreter is asked for explicitly, but the host description still probes the device).
@_cdecl("LLVMFuzzerInitialize")
public func machineFuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    setenv("VMM_HARNESS_KVM_DEVICE", "/nonexistent/kvm", 1)
    return 0
}
