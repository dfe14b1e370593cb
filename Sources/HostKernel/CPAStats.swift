import PageTables

/// Counters for everything change_page_attr does to the direct map and the TLBs.
public struct CPAStats: Hashable, Sendable {
    /// Direct-map splits by the size of the leaf split (vmstat direct_map_level2_splits is
    /// `splits.size2M`, direct_map_level3_splits is `splits.size1G`).
    public var splits = LeafCounts()
    /// Direct-map collapses by the size of the leaf made (direct_map_level{2,3}_collapses).
    public var collapses = LeafCounts()
    /// flush_tlb_all calls, whatever asked for them.
    public var tlbFullFlushes = 0
    /// The part of `tlbFullFlushes` done by split_large_page.
    public var tlbSplitFlushes = 0
    /// cpa_flush rounds done page by page (on_each_cpu __cpa_flush_tlb).
    public var tlbPageFlushRounds = 0
    /// Pages flushed one by one by those rounds (flush_tlb_one_kernel).
    public var tlbPagesFlushed: UInt64 = 0
    /// Present pages written back by CLFLUSH(OPT) in cpa_flush.
    public var cacheFlushPages: UInt64 = 0
    /// WBINVD on every CPU (cpa_flush_all with a cache flush).
    public var wbinvd = 0
    /// Page-table page allocations that failed (each gave -ENOMEM).
    public var allocationFailures = 0
    /// Pages whose C-bit set_memory_{en,de}crypted flipped (primary mappings).
    public var encConversions: UInt64 = 0

    public init() {}

    /// Named counters in a fixed order, for reports.
    public var fields: [(String, UInt64)] {
        [
            ("direct_map_level2_splits", UInt64(splits.size2M)),
            ("direct_map_level3_splits", UInt64(splits.size1G)),
            ("direct_map_level2_collapses", UInt64(collapses.size2M)),
            ("direct_map_level3_collapses", UInt64(collapses.size1G)),
            ("tlb_full_flushes", UInt64(tlbFullFlushes)),
            ("tlb_split_flushes", UInt64(tlbSplitFlushes)),
            ("tlb_page_flush_rounds", UInt64(tlbPageFlushRounds)),
            ("tlb_pages_flushed", tlbPagesFlushed),
            ("cache_flush_pages", cacheFlushPages),
            ("wbinvd", UInt64(wbinvd)),
            ("pgtable_alloc_failures", UInt64(allocationFailures)),
            ("cbit_conversions", encConversions),
        ]
    }
}
