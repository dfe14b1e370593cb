import PageTables

/// __split_large_page one step at a time, for the interleaving explorer: the order Linux
/// writes it, and the order seed 001 worries about ("I sure hope the code we use to split a
/// mapping is properly NMI safe"). Linux arch/x86/mm/pat/set_memory.c __split_large_page:
/// the new page table filled (split_set_pte, all 512 entries), installed with one store
/// (__set_pmd_pte → set_pte_atomic), then flush_tlb_all.
public enum SplitStep: String, CaseIterable, Sendable {
    /// alloc_pages and split_set_pte for every entry: nothing anyone else can see yet.
    case fill
    /// __set_pmd_pte: the table replaces the leaf in one store (same frames, same attributes).
    case install
    /// The wrong order's first write: the leaf cleared (not present) before the table goes in.
    case clear
    /// The wrong order's second write: the table put where the cleared leaf was.
    case installAfterClear = "install-after-clear"
    /// flush_tlb_all.
    case flush

    public var label: String {
        switch self {
        case .fill: "alloc_pages and split_set_pte ×512 (the new table, not yet visible)"
        case .install: "__set_pmd_pte: the table installed with one store"
        case .clear: "the large entry cleared (not present)"
        case .installAfterClear: "the table installed where the entry was cleared"
        case .flush: "flush_tlb_all"
        }
    }
}

extension Kernel {
    /// No invalidation from the page-table writes themselves: the routine's own flush step
    /// does it (x86 has no break-before-make in hardware).
    struct NoInvalidation: TLBInvalidator {
        mutating func invalidate(virt: UInt64, level: Int) {}
    }

    /// Runs one step of splitting the large direct-map leaf that maps `address` (a write
    /// with no flush leaves the CPUs' TLBs as they are, noted unflushed). -EINVAL when the
    /// step does not apply: no large leaf to split (or to install after clearing).
    public mutating func splitStep(_ step: SplitStep, address: UInt64) -> KernelStatus {
        var none = NoInvalidation()
        let va = VirtAddr(address)
        switch step {
        case .fill:
            return .ok
        case .flush:
            flushTLBAll()
            return .ok
        case .install, .clear, .installAfterClear:
            guard let leaf = pageTable.lookup(va), leaf.size != .size4K else { return .error(.EINVAL) }
            let present = leaf.descriptor.isPresentLeaf
            do throws(PageTableError) {
                switch step {
                case .install:
                    guard present else { return .error(.EINVAL) }
                    try pageTable.splitBlock(virt: va, level: leaf.size.level, &none, breakBeforeMake: false)
                    countDirectMapSplit(leaf.size)
                case .clear:
                    guard present else { return .error(.EINVAL) }
                    let cleared = Descriptor.leaf(leaf.descriptor.frame, leaf.attributes.subtracting(.present))
                    try pageTable.replace(virt: va, level: leaf.size.level, with: cleared, &none, breakBeforeMake: false)
                    for i in 0..<leaf.size.pages { noteUnflushed(leaf.virt.rawValue + i << pageShift) }
                default:
                    guard !present else { return .error(.EINVAL) }
                    try pageTable.splitBlock(virt: va, level: leaf.size.level, &none, breakBeforeMake: false,
                                             childAttributes: leaf.attributes.union(.present))
                    countDirectMapSplit(leaf.size)
                }
            } catch {
                return .error(.ENOMEM)
            }
            log("split step: \(step.rawValue) at \(hex(address))")
            return .ok
        }
    }
}
