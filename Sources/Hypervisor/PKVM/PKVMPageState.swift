import PageTables

/// A page's state as one pKVM component sees it (enum pkvm_page_state). From Linux 6.15 the
/// host's and the hypervisor's states live in the hypervisor's vmemmap (struct hyp_page) with
/// these values; a guest's state lives in its stage-2 entry's software bits, and an invalid
/// entry reads as NOPAGE. Linux arch/arm64/kvm/hyp/include/nvhe/memory.h.
public enum PKVMPageState: UInt8, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// Owned by the component, and not shared.
    case owned = 0
    /// Owned, and shared with another component (BIT(0)).
    case sharedOwned = 1
    /// Borrowed: another component's page shared with this one (BIT(1)).
    case sharedBorrowed = 2
    /// Not accessible to this component (BIT(2)).
    case noPage = 4

    /// As the ownership selftest's tuples name it (`SHARED_OWNED`).
    public var description: String {
        switch self {
        case .owned: "OWNED"
        case .sharedOwned: "SHARED_OWNED"
        case .sharedBorrowed: "SHARED_BORROWED"
        case .noPage: "NOPAGE"
        }
    }

    /// The kernel's name (`PKVM_PAGE_SHARED_OWNED`, `PKVM_NOPAGE`).
    public var linuxName: String { self == .noPage ? "PKVM_NOPAGE" : "PKVM_PAGE_" + description }

    /// The software bits a guest stage-2 leaf carries for this state (pkvm_mkstate: SW0 for
    /// SHARED_OWNED, SW1 for SHARED_BORROWED, PTE bits 55 and 56).
    /// Linux arch/arm64/kvm/hyp/include/nvhe/mem_protect.h pkvm_mkstate.
    public var softwareBits: Attributes {
        switch self {
        case .sharedOwned: .software1
        case .sharedBorrowed: .software2
        case .owned, .noPage: []
        }
    }

    /// The state a guest stage-2 entry holds (guest_get_page_state: invalid is NOPAGE,
    /// otherwise pkvm_getstate of its software bits).
    public static func guest(_ entry: Descriptor) -> PKVMPageState {
        guard entry.isPresentLeaf else { return .noPage }
        let a = entry.attributes
        if a.contains(.software1) { return .sharedOwned }
        if a.contains(.software2) { return .sharedBorrowed }
        return .owned
    }
}

/// The hypervisor's per-page record (struct hyp_page): the host's and the hypervisor's
/// states, the hypervisor's reference count (pins) and how many guests the host shares the
/// page with. An all-zero record is host OWNED and hyp NOPAGE, as mainline stores the hyp
/// state complemented (__hyp_state_comp); the model keeps only records that differ from it.
/// Linux arch/arm64/kvm/hyp/include/nvhe/memory.h.
public struct HypPage: Hashable, Sendable {
    public var host = PKVMPageState.owned
    public var hyp = PKVMPageState.noPage
    /// hyp_page.refcount: hyp_pin_shared_mem's pins (an unsigned short).
    public var refcount: UInt16 = 0
    /// host_share_guest_count: the non-protected guests the host shares the page with.
    public var hostShareGuestCount: UInt32 = 0

    public init() {}
    public var isDefault: Bool { self == HypPage() }
}

extension PKVMComponentID {
    /// A guest, as the protected-guest donation series adds it (PKVM_ID_GUEST after host and
    /// hyp). Linux arch/arm64/kvm/hyp/include/nvhe/mem_protect.h (7.0).
    public static let guest = PKVMComponentID(rawValue: 2)
}

/// What a page holds, as far as who may read it matters: the host's data, a guest's, or
/// zeros after the hypervisor wiped it (hyp_poison_page).
public enum PageContents: Hashable, Sendable {
    case host
    case guest(Int)
    case zeros
}
