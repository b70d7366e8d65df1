import FuzzSupport

/// libFuzzer's entry point for the interpreter target (built with `-sanitize=fuzzer`, which
/// supplies `main`; see scripts/fuzz.sh).
@_cdecl("LLVMFuzzerTestOneInput")
public func interpreterFuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    InterpreterCase.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
