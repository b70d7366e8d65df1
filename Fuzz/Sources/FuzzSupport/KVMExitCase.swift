import VMMHarness

/// One exit-decoder fuzz case: the input is the contents of a vCPU's kvm_run mapping after
/// KVM_RUN (zero-extended to struct kvm_run; longer inputs model a bigger mapping, as the real
/// one is three pages with port I/O data on the second). The KVM backend's decoder and element
/// hand-out must turn every input into exits without trapping: string I/O is bounds-checked
/// against the mapping, every IN element is answered through the backend's store.
public enum KVMExitCase {
    /// Largest mapping modelled (the real vCPU mapping on x86-64 is 12288 bytes).
    public static let mappingLimit = 3 * 4096

    /// Decodes one input; returns the exits the backend would hand on.
    @discardableResult
    public static func run(_ input: UnsafeRawBufferPointer) -> [GuestExit] {
        let bytes = UnsafeRawBufferPointer(rebasing: input.prefix(mappingLimit))
        return KVMRunArea.exits(decodingKVMRun: bytes)
    }
}
