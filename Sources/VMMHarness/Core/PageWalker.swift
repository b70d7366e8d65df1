/// Host-side translation of guest linear addresses through the guest's 32-bit page tables
/// (SDM vol. 3A, 4.3: 4 KiB pages, and 4 MiB pages when CR4.PSE). Read-only: it sets no
/// accessed/dirty bits and checks no permissions — the host uses it to find frames and service
/// arguments the guest handed over, not to execute guest accesses.
public enum PageWalker {
    /// The guest-physical address of `linear`, or nil when a page-directory or page-table entry is
    /// not present (or lies outside guest memory). With paging off, linear = physical.
    public static func translate(_ linear: UInt32, state: CPUState, memory: GuestMemory) -> UInt32? {
        guard state.cr0 & CR0.pg != 0, state.cr0 & CR0.pe != 0 else { return linear }
        let pdeAddress = (state.cr3 & 0xFFFF_F000) | ((linear >> 22) << 2)
        guard let pde = try? memory.read32(pdeAddress), pde & 1 != 0 else { return nil }
        if pde & 0x80 != 0, state.cr4 & 0x10 != 0 {            // PS with CR4.PSE: a 4 MiB page
            return (pde & 0xFFC0_0000) | (linear & 0x003F_FFFF)
        }
        let pteAddress = (pde & 0xFFFF_F000) | (((linear >> 12) & 0x3FF) << 2)
        guard let pte = try? memory.read32(pteAddress), pte & 1 != 0 else { return nil }
        return (pte & 0xFFFF_F000) | (linear & 0xFFF)
    }

    /// The guest-physical start of `[linear, linear + count)` when it maps to one contiguous
    /// physical range (always, without paging; with paging, when each page it touches follows the
    /// previous one physically — identity-mapped kernels), else nil.
    public static func contiguous(_ linear: UInt32, count: Int, state: CPUState, memory: GuestMemory) -> UInt32? {
        guard let start = translate(linear, state: state, memory: memory) else { return nil }
        guard state.cr0 & CR0.pg != 0, count > 0 else { return start }
        var page = linear & 0xFFFF_F000
        let last = linear &+ UInt32(count - 1)
        while page != last & 0xFFFF_F000 {
            page &+= 0x1000
            guard let p = translate(page, state: state, memory: memory), p == start &+ (page &- linear) else { return nil }
        }
        return start
    }
}
