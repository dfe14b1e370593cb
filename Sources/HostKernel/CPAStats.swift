import Hardware
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

    /// What a kernel of `isa` counts, as metrics, in order: x86 has them all; arm64 has no
    /// collapses, no flush inside a split (BBML2 splits do not flush), no cache flushes and no
    /// C-bit.
    public static func metrics(_ isa: KernelISA) -> [Metric<CPAStats>] {
        isa == .x86_64 ? all.map(\.metric) : all.filter { !$0.x86Only }.map(\.metric)
    }

    /// Every metric, and whether only x86 kernels count it.
    static let all: [(metric: Metric<CPAStats>, x86Only: Bool)] = [
        (Metric("direct_map_level2_splits", "splits", "2M direct-map leaves split to 4K (vmstat direct_map_level2_splits)") { UInt64($0.splits.size2M) }, false),
        (Metric("direct_map_level3_splits", "splits", "1G direct-map leaves split to 2M (vmstat direct_map_level3_splits)") { UInt64($0.splits.size1G) }, false),
        (Metric("direct_map_level2_collapses", "collapses", "tables re-merged into a 2M leaf") { UInt64($0.collapses.size2M) }, true),
        (Metric("direct_map_level3_collapses", "collapses", "tables re-merged into a 1G leaf") { UInt64($0.collapses.size1G) }, true),
        (Metric("tlb_full_flushes", "flushes", "flush_tlb_all calls") { UInt64($0.tlbFullFlushes) }, false),
        (Metric("tlb_split_flushes", "flushes", "the part of tlb_full_flushes done by split_large_page") { UInt64($0.tlbSplitFlushes) }, true),
        (Metric("tlb_page_flush_rounds", "rounds", "rounds that flushed page by page (cpa_flush, flush_tlb_kernel_range)") { UInt64($0.tlbPageFlushRounds) }, false),
        (Metric("tlb_pages_flushed", "pages", "pages those rounds flushed one by one (flush_tlb_one_kernel; TLBI VAALE1IS)") { $0.tlbPagesFlushed }, false),
        (Metric("cache_flush_pages", "pages", "present pages written back by CLFLUSH(OPT) in cpa_flush") { $0.cacheFlushPages }, true),
        (Metric("wbinvd", "flushes", "WBINVD on every CPU (cpa_flush_all with a cache flush)") { UInt64($0.wbinvd) }, true),
        (Metric("pgtable_alloc_failures", "allocations", "page-table page allocations that failed (-ENOMEM)") { UInt64($0.allocationFailures) }, false),
        (Metric("cbit_conversions", "pages", "pages whose C-bit set_memory_{en,de}crypted flipped") { $0.encConversions }, true),
    ]
}
