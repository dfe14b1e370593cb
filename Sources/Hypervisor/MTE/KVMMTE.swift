import Hardware
import HostKernel
import PageTables

/// KVM/arm64 VMs with MTE, as far as tags go: each VM's memslots over the VMM's VMAs, its
/// stage-2 mappings, KVM_CAP_ARM_MTE. Linux arch/arm64/kvm/mmu.c (user_mem_abort,
/// sanitise_mte_tags, kvm_arch_prepare_memory_region, the MMU notifier's unmap).
public struct KVMMTE: Sendable {
    public struct VM: Sendable {
        public let name: String
        public var mte = false
        /// Memslots: the first guest frame, the VMA, its pages.
        public var slots: [(gfn: UInt64, vma: Int, pages: Int)] = []
        /// Stage 2: guest frame → host frame.
        public var stage2: [UInt64: UInt64] = [:]
    }

    public internal(set) var vms: [VM] = []
    public init() {}

    public func vmIndex(_ name: String) -> Int? { vms.firstIndex { $0.name == name } }

    /// KVM_CREATE_VM, then KVM_ENABLE_CAP(KVM_CAP_ARM_MTE) when `mte` (refused without MTE
    /// in the CPUs: -EINVAL).
    public mutating func createVM(_ name: String, mte: Bool, systemSupportsMTE: Bool) -> KernelStatus {
        if mte && !systemSupportsMTE { return .error(.EINVAL) }
        vms.append(VM(name: name, mte: mte))
        return .ok
    }

    /// KVM_SET_USER_MEMORY_REGION's arm64 check (kvm_arch_prepare_memory_region): a VM with
    /// MTE refuses a VM_SHARED VMA until 6.2 (ea7fc1bb1cd1, lifted by c911f0d46879), and
    /// from 6.2 one without VM_MTE_ALLOWED (d89585fbb308), both -EINVAL.
    public mutating func setUserMemoryRegion(vm v: Int, gfn: UInt64, vma: Int, host: MTEHost) -> KernelStatus {
        let area = host.vmas[vma]
        if vms[v].mte {
            if host.form.kvmRefusesShared && area.shared { return .error(.EINVAL) }
            if !host.form.kvmRefusesShared && !area.mteAllowed { return .error(.EINVAL) }
        }
        if vms[v].slots.contains(where: { gfn < $0.gfn + UInt64($0.pages) && $0.gfn < gfn + UInt64(area.pages) }) { return .error(.EEXIST) }
        vms[v].slots.append((gfn, vma, area.pages))
        return .ok
    }

    /// The VMA page a guest frame is in.
    public func slot(vm v: Int, gfn: UInt64) -> (vma: Int, page: Int)? {
        guard let s = vms[v].slots.first(where: { gfn >= $0.gfn && gfn < $0.gfn + UInt64($0.pages) }) else { return nil }
        return (s.vma, Int(gfn - s.gfn))
    }

    /// user_mem_abort for a guest frame: the page faulted in through the VMM's page tables
    /// (gfn_to_pfn → handle_mm_fault), then with MTE the VMA checked (VM_MTE_ALLOWED, and
    /// not VM_SHARED before 6.2; else -EFAULT to the VMM) and sanitise_mte_tags, then the
    /// stage-2 entry. -EFAULT for a frame outside the memslots.
    public mutating func userMemAbort(vm v: Int, gfn: UInt64, host: inout MTEHost, ram: [Range<UInt64>]) -> (KernelStatus, UInt64?) {
        if let pfn = vms[v].stage2[gfn] { return (.ok, pfn) }
        guard let (vma, page) = slot(vm: v, gfn: gfn) else { return (.error(.EFAULT), nil) }
        guard let pfn = host.fault(vma: vma, page: page, ram: ram) else { return (.error(.ENOMEM), nil) }
        if vms[v].mte {
            let area = host.vmas[vma]
            guard area.mteAllowed, !(host.form.kvmRefusesShared && area.shared) else { return (.error(.EFAULT), nil) }
            host.sanitise(pfn)
        }
        vms[v].stage2[gfn] = pfn
        host.noteGuestMapped(vma: vma, page: page, pfn: pfn)
        return (.ok, pfn)
    }

    /// The MMU notifier's unmap (kvm_unmap_gfn_range) for a VMA page whose PTE changed:
    /// every stage-2 entry over it goes.
    public mutating func unmap(vma: Int, page: Int) {
        for v in vms.indices {
            for s in vms[v].slots where s.vma == vma && page < s.pages { vms[v].stage2[s.gfn + UInt64(page)] = nil }
        }
    }
}
