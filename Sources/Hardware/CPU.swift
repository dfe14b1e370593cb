import PageTables

/// One CPU: its TLB and what the TLB did. Translations are cached on a walk that ends on a
/// present leaf and stay until a flush reaches this CPU, so a missing flush leaves a stale
/// translation that later accesses use.
public struct CPU: Sendable {
    public let id: Int
    public var tlb = SoftTLB()
    public var stats = TLBStats()

    public init(id: Int) { self.id = id }

    /// Caches a walk's result.
    @inlinable public mutating func fill(_ va: UInt64, pa: UInt64, size: PageSize, attributes: Attributes) {
        tlb.fill(va, pa: pa, size: size, attributes: attributes)
    }

    /// Carries out one invalidation that reached this CPU.
    public mutating func invalidate(_ op: TLBInvalidation) {
        switch op {
        case .all:
            stats.fullFlushes += 1
            tlb.flushAll()
        case .page(let va):
            stats.pageFlushes += 1
            tlb.flush(va)
        case .nonGlobal:
            stats.asidFlushes += 1
            tlb.flushNonGlobal()
        }
    }
}

/// A TLB invalidation as it reaches one CPU. x86: INVLPG (flush_tlb_one_kernel) and a full
/// flush with CR4.PGE toggled (__flush_tlb_all); arm64: TLBI VAAE1 / VAE1 by address, TLBI
/// ASIDE1 by ASID, TLBI VMALLE1 for everything. Intel SDM Vol 3 §4.10.4; Arm ARM D8.13.
public enum TLBInvalidation: Hashable, Sendable, CustomStringConvertible {
    /// Every entry, global ones included.
    case all
    /// The entries for one 4K virtual page, whatever leaf size they came from.
    case page(UInt64)
    /// The current ASID's entries: every non-global one.
    case nonGlobal

    public var description: String {
        switch self {
        case .all: "all"
        case .page(let va): "page \(hex(va))"
        case .nonGlobal: "asid"
        }
    }
}

/// What one CPU's TLB did.
public struct TLBStats: Hashable, Sendable {
    public var hits: UInt64 = 0
    public var misses: UInt64 = 0
    /// Invalidations of one page that reached this CPU.
    public var pageFlushes: UInt64 = 0
    /// Invalidations of everything that reached this CPU.
    public var fullFlushes: UInt64 = 0
    /// Invalidations of the current ASID's entries.
    public var asidFlushes: UInt64 = 0

    public init(hits: UInt64 = 0, misses: UInt64 = 0, pageFlushes: UInt64 = 0, fullFlushes: UInt64 = 0, asidFlushes: UInt64 = 0) {
        self.hits = hits
        self.misses = misses
        self.pageFlushes = pageFlushes
        self.fullFlushes = fullFlushes
        self.asidFlushes = asidFlushes
    }

    /// All flushes of any kind.
    public var flushes: UInt64 { pageFlushes + fullFlushes + asidFlushes }

    /// The per-CPU metrics, by suffix: `cpuN_tlb_hits` and so on.
    public static let metrics: [Metric<TLBStats>] = [
        Metric("tlb_hits", "lookups", "accesses whose translation the CPU's TLB held") { $0.hits },
        Metric("tlb_misses", "lookups", "accesses that walked the page table") { $0.misses },
        Metric("tlb_flushes", "flushes", "TLB invalidations that reached the CPU (page, ASID or all)") { $0.flushes },
    ]
}

/// An arm64 TLB maintenance instruction at EL1 (Arm ARM C5.5): by VA for the current ASID
/// and global entries (VAE1, VALE1), by VA for all ASIDs (VAAE1, VAALE1), by ASID (ASIDE1),
/// or everything (VMALLE1). The `IS` forms are broadcast to every CPU in the Inner
/// Shareable domain; the others act on the CPU that executes them. The last-level (`L`)
/// forms keep walk caches, which cocomem does not model, so they invalidate the same TLB
/// entries. Linux arch/arm64/include/asm/tlbflush.h.
public enum ArmTLBI: String, CaseIterable, Sendable {
    case vae1is, vale1is, vaae1is, vaale1is, aside1is, vmalle1is
    case vae1, vale1, vaae1, vaale1, aside1, vmalle1

    /// Whether the instruction reaches every CPU.
    public var broadcast: Bool { rawValue.hasSuffix("is") }
    /// Whether it names a virtual address.
    public var byAddress: Bool { rawValue.hasPrefix("va") }

    /// What it invalidates in a TLB that holds one ASID's entries and the global ones.
    public func invalidation(va: UInt64) -> TLBInvalidation {
        if byAddress { return .page(va) }
        return rawValue.hasPrefix("aside1") ? .nonGlobal : .all
    }
}
