import Hardware
import HostKernel
import PageTables

/// Whether KVM flushes caches when an SEV guest's memory is reclaimed from the VMM
/// (`kvm.sev-reclaim-flush`).
public enum SEVReclaimFlush: String, CaseIterable, Hashable, Sendable {
    /// 6.0 on (5.15.70): sev_guest_memory_reclaimed WBINVDs every CPU after an MMU-notifier
    /// invalidation ("KVM: SEV: add cache flush to solve SEV cache incoherency issues").
    case wbinvd
    /// Before: nothing, so guest-key lines of a page the host takes back can be written back
    /// over the host's new data.
    case none

    public var summary: String {
        switch self {
        case .wbinvd: "Linux 6.0 on: sev_guest_memory_reclaimed does WBINVD on every CPU after an MMU-notifier invalidation"
        case .none: "before 6.0: no flush when the VMM's mapping of guest memory is invalidated"
        }
    }
}

/// KVM's SEV (not SNP) side: each VM's registered region (pinned through the VMM's
/// mapping), its launch, and the cache flushes at each point. arch/x86/kvm/svm/sev.c.
public struct KVMSEV: Sendable {
    public struct VM: Hashable, Sendable {
        public var pinned: [UInt64] = []
        public var launched = false
        /// A region is registered (KVM keeps it in regions_list).
        public var registered = false
    }
    public var reclaimFlush = SEVReclaimFlush.wbinvd
    public internal(set) var vms: [VM]

    public init(vms: Int) { self.vms = Array(repeating: VM(), count: vms) }

    public var pinnedPages: Int { vms.reduce(0) { $0 + $1.pinned.count } }

    /// KVM_SEV_LAUNCH_START: the guest's ASID bound, its key in use.
    public mutating func launchStart(_ v: Int, memory: inout SEVMemory) -> KernelStatus {
        guard !vms[v].launched else { return .error(.EINVAL) }
        vms[v].launched = true
        memory.setAlive(v, true)
        return .ok
    }

    /// KVM_MEMORY_ENCRYPT_REG_REGION: sev_pin_memory (pin_user_pages_fast with FOLL_WRITE;
    /// FOLL_LONGTERM since 7e066cb9b71a) over the VMM's range, then sev_clflush_pages,
    /// which returns at once on SME_COHERENT CPUs. A short pin unpins and is -ENOMEM.
    public mutating func registerRegion(_ v: Int, kernel: inout Kernel, process pi: Int, addr: UInt64, pages: Int, memory: inout SEVMemory) -> KernelStatus {
        var acc = AllAccessible()
        var got: [UInt64] = []
        for i in 0..<pages {
            guard case .pages(1, let pfn, _) = kernel.user.getUserPages(process: pi, addr: addr + UInt64(i) << pageShift, pages: 1,
                                                                        flags: GUPFlags(write: true, pin: true, longterm: true), &acc) else {
                for p in got { _ = kernel.user.unpinUserPage(pfn: p) }
                return .error(.ENOMEM)
            }
            got.append(pfn)
        }
        vms[v].pinned += got
        vms[v].registered = true
        if !memory.coherent { for p in got { memory.clflush(p) } }
        return .ok
    }

    /// KVM_SEV_LAUNCH_UPDATE_DATA over guest frames: sev_clflush_pages of the pinned pages,
    /// then the firmware encrypts them in place with the guest's key.
    public mutating func launchUpdateData(_ v: Int, pfns: [UInt64], memory: inout SEVMemory) -> KernelStatus {
        guard vms[v].launched else { return .error(.EINVAL) }
        for p in pfns {
            if !memory.coherent { memory.clflush(p) }
            memory.launchEncrypt(p)
        }
        return .ok
    }

    /// KVM_MEMORY_ENCRYPT_UNREG_REGION and sev_vm_destroy: WBINVD on every CPU ("CLFLUSH
    /// will not do this"), then the pages unpinned; destroy also ends the guest's key.
    public mutating func release(_ v: Int, destroy: Bool, kernel: inout Kernel, memory: inout SEVMemory) -> KernelStatus {
        // sev_mem_enc_unregister_region: a region not registered is -EINVAL.
        if !destroy && !vms[v].registered { return .error(.EINVAL) }
        memory.wbinvd()
        vms[v].registered = false
        for p in vms[v].pinned { _ = kernel.user.unpinUserPage(pfn: p) }
        vms[v].pinned = []
        if destroy {
            memory.forgetGuestData(v)
            memory.setAlive(v, false)
            vms[v].launched = false
        }
        return .ok
    }

    /// kvm_arch_guest_memory_reclaimed → sev_guest_memory_reclaimed: WBINVD for an SEV
    /// guest (every guest here is one: KVM_SEV_INIT is implied) from 6.0, nothing before.
    public mutating func guestMemoryReclaimed(_ v: Int, memory: inout SEVMemory) {
        if reclaimFlush == .wbinvd { memory.wbinvd() }
    }
}
