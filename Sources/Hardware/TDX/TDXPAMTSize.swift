import PageTables

/// How the host gives the TDX module its PAMT (`host.tdx-pamt`).
public enum TDXPAMTMode: String, CaseIterable, Hashable, Sendable {
    /// At TDX init, for all TDX memory: tdmr_get_pamt_sz's three levels (Linux 6.x).
    case `static`
    /// Dynamic PAMT (Kirill Shutemov v2, Rick Edgecombe v6; posted, not merged): the 4K
    /// level replaced by a bitmap, and a page pair of 4K entries installed per 2M region only
    /// while a 4K page in it is in use (TDH.PHYMEM.PAMT.ADD/REMOVE, a refcount per 2M).
    case dynamic

    public var summary: String {
        switch self {
        case .static: "PAMT for all TDX memory at init (tdmr_get_pamt_sz): 16 bytes per 4K page, about 0.4%"
        case .dynamic: "Dynamic PAMT (posted, not merged): a 1-bit-per-4K bitmap, a page pair per 2M region in use at 4K, a refcount per 2M"
        }
    }
}

/// The PAMT's memory, as the host kernel allocates it. Linux arch/x86/virt/vmx/tdx/tdx.c
/// tdmr_get_pamt_sz (16-byte entries in TDX 1.5); the dynamic form from the DPAMT series'
/// tdmr_get_pamt_bitmap_sz, tdx_pamt_get/put and pamt_refcounts
/// (../shared/reference/kvm-tdx-cca.md §B).
public enum TDXPAMTSize {
    /// pamt_{4k,2m,1g}_entry_size.
    public static let entryBytes: UInt64 = 16
    /// A page pair: the 512 4K entries of one 2M region.
    public static let pairBytes: UInt64 = 2 * pageBytes

    static func pageAligned(_ b: UInt64) -> UInt64 { (b + pageBytes - 1) & ~(pageBytes - 1) }

    /// Static PAMT for a TDMR of `bytes`: each level's entries, page-aligned.
    public static func staticBytes(tdmr bytes: UInt64) -> UInt64 {
        pageAligned((bytes >> 12) * entryBytes) + pageAligned((bytes >> 21) * entryBytes) + pageAligned((bytes >> 30) * entryBytes)
    }

    /// Dynamic PAMT's fixed part for a TDMR: the 4K bitmap (1 bit per 4K page) and the 2M and
    /// 1G levels.
    public static func dynamicFixedBytes(tdmr bytes: UInt64) -> UInt64 {
        pageAligned((bytes >> 12) / 8) + pageAligned((bytes >> 21) * entryBytes) + pageAligned((bytes >> 30) * entryBytes)
    }

    /// pamt_refcounts: one atomic_t per 2M of physical addresses up to max_pfn.
    public static func refcountBytes(maxPA: UInt64) -> UInt64 { pageAligned(((maxPA + (2 << 20) - 1) >> 21) * 4) }

    /// The whole dynamic PAMT with `regions` 2M regions holding a page pair.
    public static func dynamicBytes(tdmr bytes: UInt64, maxPA: UInt64, regions: UInt64) -> UInt64 {
        dynamicFixedBytes(tdmr: bytes) + refcountBytes(maxPA: maxPA) + regions * pairBytes
    }
}

extension PAMT {
    /// 2M regions with a 4K entry in use (not PT_NDA): those a dynamic PAMT keeps a page
    /// pair for (the kernel's refcount above zero).
    public var regionsWith4KEntries: Int {
        Set(e4K.filter { $0.value.pt != .nda }.keys.map { $0 >> 9 }).count
    }
}
