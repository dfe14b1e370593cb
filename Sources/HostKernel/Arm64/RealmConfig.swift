// How a realm guest's kernel is built: the choices seed 004's thread weighs (policy slots
// `guest.cca-enc-order`, `guest.cca-vmalloc`, `guest.dcache-word-access`).

/// The order a realm's __set_memory_enc_dec changes a page in (`guest.cca-enc-order`).
public enum RealmEncOrder: String, CaseIterable, Sendable {
    /// As merged (Linux 6.13+ arch/arm64/mm/pageattr.c): the PTEs made invalid with the
    /// NS-shared bit toggled, the TLB flushed, the RSI call, the PTEs valid again.
    case invalidateFirst = "invalidate-first"
    /// The order the seed's review warned about: the RIPAS changed while the PTE is still
    /// valid, then the bit toggled and the TLB flushed.
    case inPlace = "in-place"

    public var summary: String {
        switch self {
        case .invalidateFirst: "as merged: PTEs invalid (NS bit toggled), TLB flush, RSI_IPA_STATE_SET, PTEs valid again"
        case .inPlace: "the order the review warned about: RSI_IPA_STATE_SET while the PTE is valid, then the NS bit and the flush"
        }
    }
}

/// What set_memory_{en,de}crypted does with an address outside the linear map
/// (`guest.cca-vmalloc`).
public enum RealmVmallocPolicy: String, CaseIterable, Sendable {
    /// As merged: -EINVAL (__is_lm_address), with the "pages will be leaked" WARN.
    case reject
    /// The per-page proposal from the seed's thread: each page found with vmalloc_to_page,
    /// its vmalloc PTE and its linear-map alias changed together around the RSI call.
    case perPage = "per-page"

    public var summary: String {
        switch self {
        case .reject: "as merged: -EINVAL for anything outside the linear map, vmalloc included"
        case .perPage: "the thread's proposal: per page, vmalloc_to_page, the vmalloc PTE and the linear-map alias changed together"
        }
    }
}
