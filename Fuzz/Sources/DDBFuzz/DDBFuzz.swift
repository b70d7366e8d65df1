import FuzzSupport

/// libFuzzer's entry point for the guest DDB parser (built with scripts/fuzz.sh).
@_cdecl("LLVMFuzzerTestOneInput")
public func ddbFuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    DDBCase.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
