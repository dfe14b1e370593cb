import Hardware
import HostKernel
import PageTables

/// Counts the TLB invalidations a stage-2 change issues.
struct StageTwoTLB: TLBInvalidator {
    var count = 0
    mutating func invalidate(virt: UInt64, level: Int) { count += 1 }
}

extension PKVM {
    /// What the host stage-2 says of a host access to `pa` (the check after the host's own
    /// stage-1 walk): an owner annotation refuses it; a valid or empty entry lets it through
    /// (an empty one is mapped on the fault, `hostFault`).
    public func hostStage2Allows(_ pa: UInt64) -> Bool {
        let e = hostStage2.entry(holding: VirtAddr(pa)).entry
        return e.isNone || e.isPresentLeaf
    }

    /// The host's stage-2 fault at `pa` as EL2 handles it (handle_host_mem_abort →
    /// host_stage2_idmap): nil when the access may be retried (mapped now, or already valid:
    /// -EAGAIN), -EPERM when an owner annotation refuses it (the abort is injected into the
    /// host). The mapping is the largest block-capable granule, at or below the level where
    /// the walk ended, that fits inside the memblock region or MMIO gap holding `pa`
    /// (host_stage2_adjust_range); memory is mapped RWX, MMIO RW.
    /// Linux arch/arm64/kvm/hyp/nvhe/mem_protect.c.
    public mutating func hostFault(_ pa: UInt64) -> Errno? {
        let (level, entry) = hostStage2.entry(holding: VirtAddr(pa))
        if entry.isPresentLeaf { return nil }  // -EAGAIN: raced with another CPU's fault
        if !entry.isNone {
            stats.hostStage2Aborts += 1
            return .EPERM
        }
        let r = memRange(pa)
        // Levels that support a block with a 4K granule: 1G, 2M and 4K (kvm_level_supports_block_mapping).
        for l in stride(from: min(level, 3), through: 1, by: -1) {
            let size = PageSize(level: l)!, start = pa & ~(size.bytes - 1)
            guard r.range.lowerBound <= start, start &+ size.bytes <= r.range.upperBound else { continue }
            do {
                try hostStage2.installLeaf(virt: VirtAddr(start), phys: PhysAddr(start), size: size,
                                           attributes: r.isMemory ? Self.hostMemProt : Self.hostMMIOProt)
            } catch { warn(true); return nil }
            stats.hostStage2Maps += 1
            return nil
        }
        return nil
    }

    /// host_stage2_set_owner_locked: the range must be memory (-EPERM); each page's host
    /// stage-2 entry becomes an owner annotation at 4K (kvm_pgtable_stage2_set_owner forces
    /// pages), or for the host an empty entry that refaults lazily (owner 0 writes a zero
    /// entry). A valid block over a page is replaced by an empty table with break-before-make
    /// and not rebuilt: the rest of it refaults (stage2_map_walk_leaf after -E2BIG); every
    /// valid entry removed is invalidated at its level. Then the vmemmap: OWNED for the host,
    /// NOPAGE otherwise.
    mutating func setOwner(_ addr: UInt64, _ size: UInt64, _ owner: PKVMComponentID) -> Errno? {
        guard rangeIsMemory(addr, addr &+ size) else { return .EPERM }
        let new: Descriptor = owner == .host ? .none : .pkvmOwner(owner)
        var tlb = StageTwoTLB()
        do {
            for pfn in pfns(addr, size) {
                let va = VirtAddr(pfn << pageShift)
                var (level, entry) = hostStage2.entry(holding: va)
                if level > 1 && entry.isPresentLeaf {
                    try hostStage2.breakBlock(virt: va, level: level, &tlb)
                    stats.hostStage2BlockBreaks += 1
                    (level, entry) = hostStage2.entry(holding: va)
                }
                if level == 1 && entry.isPresentLeaf {
                    try hostStage2.replace(virt: va, level: 1, with: new, &tlb)
                } else if entry != new && !(new.isNone && level > 1) {
                    try hostStage2.setEntry(virt: va, level: 1, new)
                }
            }
        } catch { warn(true) }
        stats.hostTLBInvalidations += tlb.count
        pendingHostFlushes += tlb.count
        setHost(addr, size, owner == .host ? .owned : .noPage)
        return nil
    }

    /// Takes the host VMID invalidations EL2 issued since the last call: each is TLBI
    /// IPAS2E1IS then VMALLE1IS, so the host CPUs' own translations go too
    /// (__kvm_tlb_flush_vmid_ipa, arch/arm64/kvm/hyp/nvhe/tlb.c).
    public mutating func takePendingHostFlushes() -> Int {
        defer { pendingHostFlushes = 0 }
        return pendingHostFlushes
    }

    // MARK: - The hypervisor's stage-1

    /// pkvm_create_mappings_locked: the hypervisor's linear map of `[pa, pa + size)`, PAGE_HYP.
    mutating func hypMap(_ pa: UInt64, _ size: UInt64) {
        guard size > 0 else { return }  // nr_pages 0: nothing to map
        do { try hypStage1.map(virt: VirtAddr(pa + Self.hypVAOffset), phys: PhysAddr(pa), size: size, attributes: Self.pageHyp) } catch { warn(true) }
    }

    /// kvm_pgtable_hyp_unmap.
    mutating func hypUnmap(_ pa: UInt64, _ size: UInt64) {
        guard size > 0 else { return }
        do { try hypStage1.unmap(virt: VirtAddr(pa + Self.hypVAOffset), size: size) } catch { warn(true) }
    }

    /// Whether the hypervisor's stage-1 maps `pa`.
    public func hypMaps(_ pa: UInt64) -> Bool { hypStage1.translate(VirtAddr(pa + Self.hypVAOffset)) != nil }
}
