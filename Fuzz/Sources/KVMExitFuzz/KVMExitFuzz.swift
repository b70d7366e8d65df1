import FuzzSupport

/// libFuzzer's entry point for the KVM exit decoder (built with scripts/fuzz.sh, which links
/// libFuzzer's `main`). Needs no /dev/kvm: the input is a kvm_run image.
@_cdecl("LLVMFuzzerTestOneInput")
public func kvmExitFuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    KVMExitCase.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
