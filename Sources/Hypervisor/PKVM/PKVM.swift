import Hardware
import HostKernel
import PageTables

/// A VM as pKVM's EL2 holds it (struct pkvm_hyp_vm): its handle, whether it is protected,
/// and its stage-2 table, whose leaves carry the guest's page states in their software bits.
/// Linux arch/arm64/kvm/hyp/include/nvhe/pkvm.h.
public struct PKVMGuest: Sendable {
    public let name: String
    /// pkvm_handle_t: HANDLE_OFFSET (0x1000) plus the VM's index. Linux hyp/nvhe/pkvm.c.
    public let handle: UInt32
    /// kvm_vm_is_protected: memory is donated, not shared, and the host loses access.
    public let isProtected: Bool
    public internal(set) var stage2: PageTable
    /// KVM_ARCH_FLAG_MTE_ENABLED.
    public internal(set) var mteEnabled = false
    /// __pkvm_finalize_teardown_vm ran: the VM's pages are back with the host.
    public internal(set) var tornDown = false
}

/// A page donated to a guest: which guest and at which gfn (mainline 7.0 encodes both in the
/// host stage-2's invalid entry, host_stage2_encode_gfn_meta; the model keeps them aside).
public struct GuestPage: Hashable, Sendable {
    public let guest: Int
    public let gfn: UInt64
}

/// What pKVM's EL2 counted.
public struct PKVMStats: Hashable, Sendable {
    /// Host stage-2 faults that host_stage2_idmap resolved by mapping (the lazy identity map).
    public var hostStage2Maps = 0
    /// Host accesses the host stage-2 refused (an owner annotation): the abort EL2 injects.
    public var hostStage2Aborts = 0
    /// Host stage-2 blocks broken because a page inside them changed owner (the rest of the
    /// block is dropped and refaults lazily).
    public var hostStage2BlockBreaks = 0
    /// TLB invalidations of the host's VMID (each also flushes the host's stage-1 entries:
    /// __kvm_tlb_flush_vmid_ipa issues TLBI IPAS2E1IS then VMALLE1IS).
    public var hostTLBInvalidations = 0
    /// TLB invalidations of guests' VMIDs (a guest stage-2 entry removed).
    public var guestTLBInvalidations = 0
    /// Pages hyp_poison_page wiped before the host could see them again.
    public var pagesPoisoned = 0
    /// Ownership transitions that succeeded, and those refused with an errno.
    public var transitions = 0
    public var refusals = 0
    /// WARN_ON()s hit at EL2 (a "cannot fail" update failed).
    public var warnings = 0
}

/// pKVM at EL2: the hypervisor's vmemmap of page states, the host stage-2 (an identity map
/// filled lazily, with owner annotations for pages the host gave away), the hypervisor's own
/// stage-1, and each VM's stage-2. Follows Linux v6.16 arch/arm64/kvm/hyp/nvhe/mem_protect.c
/// for the host, hypervisor, FF-A and shared-guest transitions, and the Android Common
/// Kernel's (android16-6.12) __pkvm_host_donate_guest and __pkvm_guest_relinquish_to_host for
/// protected guests, whose ownership selftest covers both (docs/pkvm.md).
public struct PKVM: Sendable {
    /// hyp_memory: the memblock regions (RAM), sorted; everything else is MMIO.
    public let memory: [Range<UInt64>]
    /// struct hyp_page records that differ from host OWNED / hyp NOPAGE, by PFN.
    public internal(set) var vmemmap: [UInt64: HypPage] = [:]
    /// The host stage-2 (host_mmu.pgt): identity-mapped, lazily.
    public internal(set) var hostStage2: PageTable
    /// The hypervisor's stage-1 (pkvm_pgtable): its linear map of pages it owns or pinned.
    public internal(set) var hypStage1: PageTable
    public internal(set) var guests: [PKVMGuest]
    /// Pages donated to a guest, by PFN.
    public internal(set) var donated: [UInt64: GuestPage] = [:]
    /// Pages whose contents are not the host's own, by PFN.
    public internal(set) var contents: [UInt64: PageContents] = [:]
    public internal(set) var stats = PKVMStats()
    /// Host VMID invalidations not yet applied to the host CPUs' TLBs (the platform drains
    /// them into the kernel's TLBs).
    public internal(set) var pendingHostFlushes = 0

    /// The host stage-2's input size: the PA range (ID_AA64MMFR0_EL1.PARange, 48 bits here).
    public static let hostIPABits = 48
    /// A guest's IPA size (KVM_PHYS_SHIFT's default 40 bits).
    public static let guestIPABits = 40
    /// The hypervisor's linear map: a physical address plus this tag bit (kern_hyp_va's
    /// layout, simplified).
    public static let hypVAOffset: UInt64 = 1 << 47
    /// PAGE_HYP: read-write, never executable.
    public static let pageHyp: Attributes = [.present, .writable, .noExecute]
    /// PKVM_HOST_MEM_PROT (RWX) and PKVM_HOST_MMIO_PROT (RW).
    public static let hostMemProt: Attributes = [.present, .writable]
    public static let hostMMIOProt: Attributes = [.present, .writable, .noExecute]
    /// HANDLE_OFFSET: the first VM handle. Linux arch/arm64/kvm/hyp/nvhe/pkvm.c.
    public static let handleOffset: UInt32 = 0x1000

    public init(memory: [Range<UInt64>], guests: [(name: String, protected: Bool)]) {
        self.memory = memory.sorted { $0.lowerBound < $1.lowerBound }
        hostStage2 = PageTable(format: .arm64Stage2(ipaBits: Self.hostIPABits)!)
        hypStage1 = PageTable(format: .arm64_4K)
        self.guests = guests.enumerated().map { i, g in
            PKVMGuest(name: g.name, handle: Self.handleOffset + UInt32(i), isProtected: g.protected,
                      stage2: PageTable(format: .arm64Stage2(ipaBits: Self.guestIPABits)!))
        }
    }

    // MARK: - Memory ranges (find_mem_range and friends)

    /// The memblock region holding `addr`, or the MMIO gap around it (find_mem_range).
    func memRange(_ addr: UInt64) -> (isMemory: Bool, range: Range<UInt64>) {
        var lo = 0, hi = memory.count, start: UInt64 = 0, end = UInt64.max
        while lo < hi {
            let mid = (lo + hi) / 2, r = memory[mid]
            if addr < r.lowerBound { hi = mid; end = r.lowerBound } else if addr >= r.upperBound { lo = mid + 1; start = r.upperBound } else { return (true, r) }
        }
        return (false, start..<end)
    }

    public func isMemory(_ addr: UInt64) -> Bool { memRange(addr).isMemory }

    /// check_range_allowed_memory: -EINVAL when [start, end) leaves its region or gap,
    /// -EPERM when it is not memory.
    func checkRangeAllowedMemory(_ start: UInt64, _ end: UInt64) -> Errno? {
        let r = memRange(start)
        guard r.range.contains(end &- 1) else { return .EINVAL }
        return r.isMemory ? nil : .EPERM
    }

    /// range_is_memory.
    func rangeIsMemory(_ start: UInt64, _ end: UInt64) -> Bool {
        let r = memRange(start)
        return r.isMemory && r.range.contains(end &- 1)
    }

    // MARK: - Page states

    public func page(_ pfn: UInt64) -> HypPage { vmemmap[pfn] ?? HypPage() }

    mutating func update(_ pfn: UInt64, _ body: (inout HypPage) -> Void) {
        var p = vmemmap[pfn] ?? HypPage()
        body(&p)
        if p.isDefault { vmemmap[pfn] = nil } else { vmemmap[pfn] = p }
    }

    public func hostState(_ pa: UInt64) -> PKVMPageState { page(pa >> pageShift).host }
    public func hypState(_ pa: UInt64) -> PKVMPageState { page(pa >> pageShift).hyp }

    /// The guest's state at `ipa` (guest_get_page_state of the entry there).
    public func guestState(_ guest: Int, ipa: UInt64) -> PKVMPageState {
        PKVMPageState.guest(guests[guest].stage2.entry(holding: VirtAddr(ipa)).entry)
    }

    /// __host_check_page_state_range: the range is allowed memory and every page is `state`.
    func checkHost(_ addr: UInt64, _ size: UInt64, _ state: PKVMPageState) -> Errno? {
        if let e = checkRangeAllowedMemory(addr, addr &+ size) { return e }
        for pfn in pfns(addr, size) where page(pfn).host != state { return .EPERM }
        return nil
    }

    /// __hyp_check_page_state_range.
    func checkHyp(_ addr: UInt64, _ size: UInt64, _ state: PKVMPageState) -> Errno? {
        for pfn in pfns(addr, size) where page(pfn).hyp != state { return .EPERM }
        return nil
    }

    /// __guest_check_page_state_range: every entry a leaf walk of the range meets is `state`.
    func checkGuest(_ guest: Int, _ ipa: UInt64, _ size: UInt64, _ state: PKVMPageState) -> Errno? {
        var a = ipa
        while a < ipa &+ size {
            let (level, entry) = guests[guest].stage2.entry(holding: VirtAddr(a))
            if PKVMPageState.guest(entry) != state { return .EPERM }
            let span: UInt64 = 1 << levelShift(level)
            a = (a & ~(span - 1)) &+ span
        }
        return nil
    }

    func pfns(_ addr: UInt64, _ size: UInt64) -> StrideTo<UInt64> {
        stride(from: addr >> pageShift, to: (addr &+ size) >> pageShift, by: 1)
    }

    mutating func setHost(_ addr: UInt64, _ size: UInt64, _ state: PKVMPageState) {
        for pfn in pfns(addr, size) { update(pfn) { $0.host = state } }
    }

    mutating func setHyp(_ addr: UInt64, _ size: UInt64, _ state: PKVMPageState) {
        for pfn in pfns(addr, size) { update(pfn) { $0.hyp = state } }
    }

    /// WARN_ON(): an update EL2 assumes cannot fail did.
    mutating func warn(_ failed: Bool) {
        if failed { stats.warnings += 1 }
    }

    /// Counts a transition's result and returns it as the kernel function's status.
    mutating func finish(_ e: Errno?) -> KernelStatus {
        if let e {
            stats.refusals += 1
            return .error(e)
        }
        stats.transitions += 1
        return .ok
    }
}
