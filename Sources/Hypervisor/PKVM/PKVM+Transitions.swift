import Hardware
import HostKernel
import PageTables

/// The ownership transitions, each under its Linux name without the leading underscores.
/// Each checks every party's state before it writes anything and returns the errno the
/// source returns; updates EL2 assumes cannot fail are WARN_ON()s (counted). Linux v6.16
/// arch/arm64/kvm/hyp/nvhe/mem_protect.c unless marked; the protected-guest functions
/// follow the Android Common Kernel (android16-6.12).
extension PKVM {
    /// __pkvm_host_share_hyp: host OWNED → SHARED_OWNED, hyp NOPAGE → SHARED_BORROWED.
    public mutating func hostShareHyp(pfn: UInt64) -> KernelStatus {
        let phys = pfn << pageShift
        if let e = checkHost(phys, pageBytes, .owned) ?? checkHyp(phys, pageBytes, .noPage) { return finish(e) }
        setHyp(phys, pageBytes, .sharedBorrowed)
        setHost(phys, pageBytes, .sharedOwned)
        return finish(nil)
    }

    /// __pkvm_host_unshare_hyp: the reverse of share; -EBUSY while the hypervisor has it pinned.
    public mutating func hostUnshareHyp(pfn: UInt64) -> KernelStatus {
        let phys = pfn << pageShift
        if let e = checkHost(phys, pageBytes, .sharedOwned) ?? checkHyp(phys, pageBytes, .sharedBorrowed) { return finish(e) }
        if page(pfn).refcount != 0 { return finish(.EBUSY) }
        setHyp(phys, pageBytes, .noPage)
        setHost(phys, pageBytes, .owned)
        return finish(nil)
    }

    /// __pkvm_host_donate_hyp: host OWNED → NOPAGE (owner annotation HYP), hyp NOPAGE → OWNED
    /// and mapped in the hypervisor's stage-1.
    public mutating func hostDonateHyp(pfn: UInt64, nrPages: UInt64) -> KernelStatus {
        let phys = pfn << pageShift, size = nrPages << pageShift
        if let e = checkHost(phys, size, .owned) ?? checkHyp(phys, size, .noPage) { return finish(e) }
        setHyp(phys, size, .owned)
        hypMap(phys, size)
        warn(setOwner(phys, size, .hyp) != nil)
        return finish(nil)
    }

    /// __pkvm_hyp_donate_host: hyp OWNED → NOPAGE (unmapped), host NOPAGE → OWNED.
    public mutating func hypDonateHost(pfn: UInt64, nrPages: UInt64) -> KernelStatus {
        let phys = pfn << pageShift, size = nrPages << pageShift
        if let e = checkHyp(phys, size, .owned) ?? checkHost(phys, size, .noPage) { return finish(e) }
        setHyp(phys, size, .noPage)
        hypUnmap(phys, size)
        warn(setOwner(phys, size, .host) != nil)
        return finish(nil)
    }

    /// hyp_pin_shared_mem: the host must share the range with the hypervisor; each page's
    /// refcount goes up, and the first pin maps it in the hypervisor's stage-1. A refcount
    /// at USHRT_MAX is a BUG_ON in hyp_page_ref_inc: nil then.
    public mutating func hypPinSharedMem(pfn: UInt64, nrPages: UInt64) -> KernelStatus? {
        let phys = pfn << pageShift, size = nrPages << pageShift
        if let e = checkHost(phys, size, .sharedOwned) ?? checkHyp(phys, size, .sharedBorrowed) { return finish(e) }
        for p in pfns(phys, size) where page(p).refcount == .max { return nil }
        for p in pfns(phys, size) {
            update(p) { $0.refcount += 1 }
            if page(p).refcount == 1 { hypMap(p << pageShift, pageBytes) }
        }
        return finish(nil)
    }

    /// hyp_unpin_shared_mem: returns nothing; the last unpin unmaps the page from the
    /// hypervisor. Unpinning a page with refcount 0 is hyp_page_ref_dec's BUG_ON: false then.
    public mutating func hypUnpinSharedMem(pfn: UInt64, nrPages: UInt64) -> Bool {
        let phys = pfn << pageShift, size = nrPages << pageShift
        for p in pfns(phys, size) where page(p).refcount == 0 { return false }
        for p in pfns(phys, size) {
            if page(p).refcount == 1 { hypUnmap(p << pageShift, pageBytes) }
            update(p) { $0.refcount -= 1 }
        }
        return true
    }

    /// __pkvm_host_share_ffa: host OWNED → SHARED_OWNED (no second party recorded).
    public mutating func hostShareFFA(pfn: UInt64, nrPages: UInt64) -> KernelStatus {
        let phys = pfn << pageShift, size = nrPages << pageShift
        if let e = checkHost(phys, size, .owned) { return finish(e) }
        setHost(phys, size, .sharedOwned)
        return finish(nil)
    }

    /// __pkvm_host_unshare_ffa: host SHARED_OWNED → OWNED.
    public mutating func hostUnshareFFA(pfn: UInt64, nrPages: UInt64) -> KernelStatus {
        let phys = pfn << pageShift, size = nrPages << pageShift
        if let e = checkHost(phys, size, .sharedOwned) { return finish(e) }
        setHost(phys, size, .owned)
        return finish(nil)
    }

    /// __guest_check_transition_size: one page, or one 2M block (512 pages) with the
    /// physical and guest addresses both 2M-aligned; nil (-EINVAL) otherwise.
    static func transitionSize(phys: UInt64, ipa: UInt64, nrPages: UInt64) -> UInt64? {
        if nrPages == 1 { return pageBytes }
        let block = PageSize.size2M.bytes
        guard nrPages == block >> pageShift, (phys | ipa) & (block - 1) == 0 else { return nil }
        return block
    }

    /// Protections a share may give (KVM_PGTABLE_PROT_R/W/X); anything else is -EINVAL.
    public struct Prot: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let x = Prot(rawValue: 1 << 0)
        public static let w = Prot(rawValue: 1 << 1)
        public static let r = Prot(rawValue: 1 << 2)
        public static let device = Prot(rawValue: 1 << 3)
        public static let normalNC = Prot(rawValue: 1 << 4)
        public static let rwx: Prot = [.r, .w, .x]
    }

    /// __pkvm_host_share_guest: -EINVAL for a protection beyond RWX or a size that is not
    /// one page or an aligned 2M block; the range must be allowed memory; the guest's range
    /// NOPAGE; each host page OWNED, or SHARED_OWNED with guests already (-EBUSY when the
    /// count is at U32_MAX). Then host SHARED_OWNED with the count up, and the guest maps it
    /// SHARED_BORROWED.
    public mutating func hostShareGuest(pfn: UInt64, gfn: UInt64, nrPages: UInt64, guest g: Int, prot: Prot) -> KernelStatus {
        let phys = pfn << pageShift, ipa = gfn << pageShift
        guard prot.isSubset(of: .rwx) else { return finish(.EINVAL) }
        guard let size = Self.transitionSize(phys: phys, ipa: ipa, nrPages: nrPages) else { return finish(.EINVAL) }
        if let e = checkRangeAllowedMemory(phys, phys &+ size) ?? checkGuest(g, ipa, size, .noPage) { return finish(e) }
        for p in pfns(phys, size) {
            let page = page(p)
            switch page.host {
            case .owned: continue
            case .sharedOwned:
                if page.hostShareGuestCount == .max { return finish(.EBUSY) }
                if page.hostShareGuestCount > 0 { continue }  // only host to guest multi-sharing is tolerated
                return finish(.EPERM)
            default: return finish(.EPERM)
            }
        }
        for p in pfns(phys, size) {
            update(p) {
                $0.host = .sharedOwned
                $0.hostShareGuestCount += 1
            }
        }
        var attributes: Attributes = [.present]
        if prot.contains(.w) { attributes.insert(.writable) }
        if !prot.contains(.x) { attributes.insert(.noExecute) }
        mapGuest(g, ipa: ipa, phys: phys, size: size, attributes.union(PKVMPageState.sharedBorrowed.softwareBits))
        return finish(nil)
    }

    /// __pkvm_host_unshare_guest: the size rule as for share; the guest's leaf at `gfn` must
    /// exist (-ENOENT), be exactly that size (-E2BIG) and be SHARED_BORROWED (-EPERM), its
    /// pages host SHARED_OWNED with a count (-EPERM). Then the leaf goes, and each page's
    /// count comes down, the host owning it alone again at zero.
    public mutating func hostUnshareGuest(gfn: UInt64, nrPages: UInt64, guest g: Int) -> KernelStatus {
        let ipa = gfn << pageShift
        guard let size = Self.transitionSize(phys: 0, ipa: ipa, nrPages: nrPages) else { return finish(.EINVAL) }
        let (level, entry) = guests[g].stage2.entry(holding: VirtAddr(ipa))
        guard entry.isPresentLeaf else { return finish(.ENOENT) }
        guard 1 << levelShift(level) == size else { return finish(.E2BIG) }
        guard PKVMPageState.guest(entry) == .sharedBorrowed else { return finish(.EPERM) }
        let phys = entry.frame.rawValue << pageShift
        if let e = checkRangeAllowedMemory(phys, phys &+ size) {
            warn(true)
            return finish(e)
        }
        for p in pfns(phys, size) {
            if page(p).host != .sharedOwned { return finish(.EPERM) }
            if page(p).hostShareGuestCount == 0 {
                warn(true)
                return finish(.EINVAL)
            }
        }
        unmapGuest(g, ipa: ipa, size: size)
        for p in pfns(phys, size) {
            update(p) {
                $0.hostShareGuestCount -= 1
                if $0.hostShareGuestCount == 0 { $0.host = .owned }
            }
        }
        return finish(nil)
    }

    /// __pkvm_host_donate_guest (Android Common Kernel; mainline 7.0 takes one page): host
    /// OWNED → NOPAGE with the guest as owner in the host stage-2, guest NOPAGE → OWNED,
    /// mapped RWX page by page (protected VMs are mapped at page granularity). The page keeps
    /// its contents: the VMM loads a protected guest's image and firmware this way.
    public mutating func hostDonateGuest(pfn: UInt64, gfn: UInt64, nrPages: UInt64, guest g: Int) -> KernelStatus {
        let phys = pfn << pageShift, ipa = gfn << pageShift
        let (size, overflow) = nrPages.multipliedReportingOverflow(by: pageBytes)
        if overflow { return finish(.EINVAL) }
        if let e = checkHost(phys, size, .owned) ?? checkGuest(g, ipa, size, .noPage) { return finish(e) }
        warn(setOwner(phys, size, .guest) != nil)
        for i in 0..<nrPages {
            donated[pfn + i] = GuestPage(guest: g, gfn: gfn + i)
            mapGuest(g, ipa: ipa + i << pageShift, phys: phys + i << pageShift, size: pageBytes, [.present, .writable])
        }
        return finish(nil)
    }

    /// __pkvm_guest_relinquish_to_host (Android Common Kernel): the guest gives a page back.
    /// A non-protected VM, or an IPA with nothing mapped, is a no-op returning pa 0; a page
    /// the guest does not own is -EPERM, one still referenced (DMA) -EBUSY. Otherwise EL2
    /// wipes it (hyp_poison_page), removes the guest's entry and gives it to the host.
    public mutating func guestRelinquishToHost(guest g: Int, ipa: UInt64) -> (status: KernelStatus, pa: UInt64) {
        guard guests[g].isProtected else { return (finish(nil), 0) }
        let (level, entry) = guests[g].stage2.entry(holding: VirtAddr(ipa))
        guard entry.isPresentLeaf else { return (finish(nil), 0) }
        guard PKVMPageState.guest(entry) == .owned else { return (finish(.EPERM), 0) }
        let span: UInt64 = 1 << levelShift(level)
        let phys = (entry.frame.rawValue << pageShift) + (ipa & (span - 1) & ~(pageBytes - 1))
        if page(phys >> pageShift).refcount != 0 { return (finish(.EBUSY), phys) }
        poison(phys)
        unmapGuest(g, ipa: ipa & ~(pageBytes - 1), size: pageBytes)
        donated[phys >> pageShift] = nil
        warn(setOwner(phys, pageBytes, .host) != nil)
        return (finish(nil), phys)
    }

    /// The host reclaims every page of a VM being torn down (__pkvm_host_reclaim_page for
    /// each, then __pkvm_finalize_teardown_vm): pages the guest owned are wiped before the
    /// host gets them back; pages the host shared come back unshared. Returns the pages
    /// reclaimed and wiped. Android Common Kernel arch/arm64/kvm/hyp/nvhe/mem_protect.c.
    public mutating func teardown(guest g: Int) -> (reclaimed: Int, poisoned: Int) {
        let leaves = (try? guests[g].stage2.leaves(virt: VirtAddr(0), size: 1 << Self.guestIPABits)) ?? []
        var reclaimed = 0, poisoned = 0
        for leaf in leaves where leaf.descriptor.isPresentLeaf {
            let phys = leaf.phys.rawValue, size = leaf.size.bytes
            switch PKVMPageState.guest(leaf.descriptor) {
            case .owned:
                for p in pfns(phys, size) {
                    poison(p << pageShift)
                    donated[p] = nil
                    poisoned += 1
                }
                warn(setOwner(phys, size, .host) != nil)
            case .sharedBorrowed:
                for p in pfns(phys, size) {
                    update(p) {
                        $0.hostShareGuestCount -= 1
                        if $0.hostShareGuestCount == 0 { $0.host = .owned }
                    }
                }
            default: break
            }
            reclaimed += Int(size >> pageShift)
            unmapGuest(g, ipa: leaf.virt.rawValue, size: size)
        }
        guests[g].stage2 = PageTable(format: .arm64Stage2(ipaBits: Self.guestIPABits)!)
        guests[g].tornDown = true
        stats.transitions += 1
        return (reclaimed, poisoned)
    }

    /// __pkvm_host_force_reclaim_page_guest (mainline 7.0): the host takes back a page it
    /// donated to a guest without the guest's consent; EL2 wipes it first. -EPERM unless the
    /// page is donated to a guest that owns it. (Mainline then marks the guest's entry
    /// poisoned, PKVM_POISON; the model removes it, so the guest reads NOPAGE.)
    public mutating func hostForceReclaimPageGuest(pfn: UInt64) -> KernelStatus {
        let phys = pfn << pageShift
        if let e = checkHost(phys, pageBytes, .noPage) { return finish(e) }
        guard let owner = donated[pfn], guestState(owner.guest, ipa: owner.gfn << pageShift) == .owned else { return finish(.EPERM) }
        poison(phys)
        unmapGuest(owner.guest, ipa: owner.gfn << pageShift, size: pageBytes)
        donated[pfn] = nil
        warn(setOwner(phys, pageBytes, .host) != nil)
        return finish(nil)
    }

    /// kvm_vm_ioctl_enable_cap(KVM_CAP_ARM_MTE): -EINVAL for a protected VM (kvm_pkvm_ext_allowed
    /// lists the caps a protected VM may have, and MTE is not one; the Android Common Kernel
    /// refuses it to every VM under pKVM) or when the system has no MTE; otherwise the VM's
    /// tags are on. Linux arch/arm64/kvm/arm.c, arch/arm64/include/asm/kvm_pkvm.h.
    public mutating func enableMTE(guest g: Int, systemSupportsMTE: Bool) -> KernelStatus {
        guard !guests[g].isProtected, systemSupportsMTE else { return .error(.EINVAL) }
        guests[g].mteEnabled = true
        return .ok
    }

    // MARK: - Helpers

    /// hyp_poison_page: EL2 zeroes the page (and cleans it to the PoC).
    mutating func poison(_ phys: UInt64) {
        contents[phys >> pageShift] = .zeros
        stats.pagesPoisoned += 1
    }

    /// kvm_pgtable_stage2_map into a guest's stage-2.
    mutating func mapGuest(_ g: Int, ipa: UInt64, phys: UInt64, size: UInt64, _ attributes: Attributes) {
        do {
            try guests[g].stage2.installLeaf(virt: VirtAddr(ipa), phys: PhysAddr(phys), size: size == pageBytes ? .size4K : .size2M, attributes: attributes)
        } catch { warn(true) }
    }

    /// kvm_pgtable_stage2_unmap of a guest range: the leaves go, each invalidated in the
    /// guest's VMID.
    mutating func unmapGuest(_ g: Int, ipa: UInt64, size: UInt64) {
        do { try guests[g].stage2.zap(virt: VirtAddr(ipa), size: size) } catch { warn(true) }
        stats.guestTLBInvalidations += 1
    }

    /// A guest's access at `ipa` through its stage-2: nil when nothing maps it (a stage-2
    /// fault: the host must donate or share a page), else the page and whether a write is
    /// allowed. A write to a page the guest owns records its private data there; a write to
    /// a page the host shares with it is the host's to read by design.
    public mutating func guestAccess(guest g: Int, ipa: UInt64, write: Bool) -> (pa: UInt64, allowed: Bool)? {
        guard let t = guests[g].stage2.translate(VirtAddr(ipa)) else { return nil }
        let pa = t.phys.rawValue & ~(pageBytes - 1)
        let allowed = !write || t.leaf.attributes.contains(.writable)
        if write && allowed && PKVMPageState.guest(t.leaf.descriptor) == .owned { contents[pa >> pageShift] = .guest(g) }
        return (pa, allowed)
    }

    /// What page `pa` holds.
    public func pageContents(_ pa: UInt64) -> PageContents { contents[pa >> pageShift] ?? .host }

    /// The host wrote the page: its contents are the host's.
    public mutating func hostWrote(_ pa: UInt64) { contents[pa >> pageShift] = nil }

    /// Whether the host pinned the page long-term when it donated it (pin_user_pages with
    /// FOLL_LONGTERM in pkvm_mem_abort).
    public func isDonated(_ pfn: UInt64) -> Bool { donated[pfn] != nil }
}
