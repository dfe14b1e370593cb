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
        public var stage2 = DigestedDictionary<UInt64, UInt64>()
    }

    public internal(set) var vms: [VM] = []
    /// A fingerprint of the VMs' stage-2 maps, from the digests they keep (for the explorer,
    /// after `trackDigests`).
    public var digest: UInt64 { vms.reduce(0) { Digest.combine($0, $1.stage2.digest ^ ($1.mte ? 1 : 0)) } }
    public private(set) var tracksDigests = false

    /// Starts keeping the stage-2 digests (VMs made later keep theirs too).
    public mutating func trackDigests() {
        tracksDigests = true
        for v in vms.indices { vms[v].stage2.track() }
    }
    public init() {}

    public func vmIndex(_ name: String) -> Int? { vms.firstIndex { $0.name == name } }

    /// KVM_CREATE_VM, then KVM_ENABLE_CAP(KVM_CAP_ARM_MTE) when `mte` (refused without MTE
    /// in the CPUs: -EINVAL).
    public mutating func createVM(_ name: String, mte: Bool, systemSupportsMTE: Bool) -> KernelStatus {
        if mte && !systemSupportsMTE { return .error(.EINVAL) }
        vms.append(VM(name: name, mte: mte))
        if tracksDigests { vms[vms.count - 1].stage2.track() }
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
    /// A write to a page the VMM shares copy-on-write with a forked child copies it first
    /// (the fork unmapped stage 2; a read maps the shared page, a write faults again).
    public mutating func userMemAbort(vm v: Int, gfn: UInt64, write: Bool = false, host: inout MTEHost, ram: [Range<UInt64>]) -> (KernelStatus, UInt64?) {
        guard let (vma, page) = slot(vm: v, gfn: gfn) else { return (.error(.EFAULT), nil) }
        let cow = write && host.vmas[vma].cow.contains(page)
        if let pfn = vms[v].stage2[gfn], !cow { return (.ok, pfn) }
        if host.vmas[vma].protNone { return (.error(.EFAULT), nil) }
        guard var pfn = host.fault(vma: vma, page: page, ram: ram) else { return (.error(.ENOMEM), nil) }
        if cow, let copy = host.breakCOW(vma: vma, page: page, ram: ram) { pfn = copy }
        if vms[v].mte {
            let area = host.vmas[vma]
            guard area.mteAllowed, !(host.form.kvmRefusesShared && area.shared) else { return (.error(.EFAULT), nil) }
            host.sanitise(pfn)
        }
        vms[v].stage2[gfn] = pfn
        host.noteGuestMapped(vma: vma, page: page, pfn: pfn)
        return (.ok, pfn)
    }

    /// A stage-2 entry for a guest frame (user_mem_abort's last action).
    public mutating func mapStage2(vm v: Int, gfn: UInt64, pfn: UInt64) { vms[v].stage2[gfn] = pfn }

    /// The MMU notifier's unmap for a whole VMA (mprotect, fork's write protection).
    public mutating func unmap(vma: Int) {
        for v in vms.indices {
            for s in vms[v].slots where s.vma == vma {
                for p in 0..<UInt64(s.pages) { vms[v].stage2[s.gfn + p] = nil }
            }
        }
    }

    /// The MMU notifier's unmap (kvm_unmap_gfn_range) for a VMA page whose PTE changed:
    /// every stage-2 entry over it goes.
    public mutating func unmap(vma: Int, page: Int) {
        for v in vms.indices {
            for s in vms[v].slots where s.vma == vma && page < s.pages { vms[v].stage2[s.gfn + UInt64(page)] = nil }
        }
    }

    /// KVM_ARM_MTE_COPY_TAGS (kvm_vm_ioctl_mte_copy_tags): the checks in the kernel's order,
    /// then page by page through the memslots: FROM_GUEST copies a tagged page's tags and
    /// zeroes the buffer for an untagged one; TO_GUEST locks the page (try_page_mte_tagging,
    /// its answer ignored), writes the buffer's tags (all `tag`) and flags it. A page that
    /// cannot be found stops the copy: -EFAULT if it was the first, else the bytes done.
    /// Linux arch/arm64/kvm/guest.c; Documentation/virt/kvm/api.rst 4.130.
    public mutating func copyTags(vm v: Int, guestIPA: UInt64, length: UInt64, flags: UInt64, reserved: UInt64, tag: UInt8,
                                  dirtyLogging: Bool, host: inout MTEHost, ram: [Range<UInt64>]) -> (MTECopyTags, [MTETags.Page]) {
        let fromGuest: UInt64 = 1
        guard vms[v].mte, reserved == 0, flags & ~fromGuest == 0, length & 0xfff == 0, guestIPA & 0xfff == 0,
              length <= UInt64(Int32.max) else { return (.error(.EINVAL), []) }
        let write = flags & fromGuest == 0
        if write && dirtyLogging { return (.error(.EBUSY), []) }
        var left = length, gfn = guestIPA >> 12, read: [MTETags.Page] = []
        while left > 0 {
            guard let (vma, page) = slot(vm: v, gfn: gfn), let pfn = host.fault(vma: vma, page: page, ram: ram) else {
                return (left == length ? .error(.EFAULT) : .partial(bytes: length - left), read)
            }
            if write {
                _ = host.tryPageMTETaggingForCopy(pfn)
                host.guestStoreTags(vma: vma, page: page, pfn: pfn, tag: tag)
                host.setTaggedForCopy(pfn)
            } else {
                read.append(host.pageMTETagged(pfn) ? host.tags.page(pfn) : MTETags.Page())
            }
            left -= 4096
            gfn += 1
        }
        return (.ok, read)
    }
}

/// What KVM_ARM_MTE_COPY_TAGS returned: 0, the bytes done when it stopped part way, or an errno.
public enum MTECopyTags: Hashable, Sendable, Outcome {
    case ok
    case partial(bytes: UInt64)
    case error(Errno)
    public var description: String {
        switch self {
        case .ok: "ok"
        case .partial(let b): "\(b) (bytes done before a page could not be found)"
        case .error(let e): e.description
        }
    }
    public var kind: OutcomeKind {
        switch self {
        case .ok, .partial: .success
        case .error: .error
        }
    }
}
