import PageTables

/// What an architecture's ownership table says of a host CPU access.
public enum HostCheck: Hashable, Sendable {
    case allowed
    /// The access faults with this kind (`#PF(RMP)` on SEV-SNP).
    case fault(FaultKind)
}

/// The ownership check a host access meets after its page-table walk, which each
/// architecture supplies: the RMP on SEV-SNP (and later the TDX module's PAMT, the GPT, pKVM's
/// host stage-2). The host kernel's one fault path asks it; it never names the architecture.
public protocol HostOwnership: Sendable {
    /// The check of a host access to `pa` through a mapping of `mappingSize` (a write, a
    /// read, or the CPU's own page-table walk).
    func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck
    /// Whether the page is given to a guest or the firmware (a read of it returns ciphertext
    /// or nothing useful).
    func isGuestOwned(pfn: UInt64) -> Bool
    /// Whether any page of the 2M region holding `pfn` is given away.
    func regionHasGuestPages(pfn: UInt64) -> Bool
    /// How many of the 512 pages of the 2M region holding `pfn` are given away (for maps).
    func guestPages(inRegionOf pfn: UInt64) -> Int
    /// Why `hostCheck` refused an access to `pa` through a mapping of `mappingSize`, in the
    /// table's terms (for fault records).
    func faultReason(pa: UInt64, mappingSize: PageSize) -> String
}

extension HostOwnership {
    /// All or nothing, for a table that cannot say how many.
    public func guestPages(inRegionOf pfn: UInt64) -> Int { regionHasGuestPages(pfn: pfn) ? 512 : 0 }
    public func faultReason(pa: UInt64, mappingSize: PageSize) -> String { "" }

    /// Of the `regions` 2M regions from the one holding `pfn`: how many hold a page given
    /// away, and how many of those also hold host pages (for maps with cells above 2M).
    public func regionsWithGuestPages(from pfn: UInt64, regions: UInt64) -> (holding: Int, mixing: Int) {
        var holding = 0, mixing = 0
        for r in 0..<regions {
            let n = guestPages(inRegionOf: (pfn & ~511) + r * 512)
            if n > 0 { holding += 1 }
            if n > 0 && n < 512 { mixing += 1 }
        }
        return (holding, mixing)
    }
}

/// A machine with no ownership table (plain x86-64): every access is allowed.
public struct NoOwnership: HostOwnership {
    public init() {}
    public func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck { .allowed }
    public func isGuestOwned(pfn: UInt64) -> Bool { false }
    public func regionHasGuestPages(pfn: UInt64) -> Bool { false }
}
