import PageTables

/// One CPU as a value: its TLB and what the TLB did (a snapshot of its part of a
/// `CPUSet`, where the kernel keeps them). Translations are cached on a walk that ends on a
/// present leaf and stay until a flush reaches the CPU, so a missing flush leaves a stale
/// translation that later accesses use.
public struct CPU: Sendable {
    public let id: Int
    public var tlb = SoftTLB()
    public var stats = TLBStats()

    public init(id: Int) { self.id = id }
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

/// Every CPU's TLB and counters in flat storage: the slots of CPU `c` are
/// `slots[c * 256 ..< c * 256 + 256]`, so a lookup reads one buffer (the hit path of the
/// model's access path, measured by `tlb_hit_ratio`). `cpu(_:)` gives one CPU as a value.
public struct CPUSet: Sendable {
    @usableFromInline var slots: [SoftTLB.Slot]
    @usableFromInline var empty: [Bool]
    public internal(set) var stats: [TLBStats]

    public init(count: Int) {
        slots = [SoftTLB.Slot](repeating: SoftTLB.Slot(tag: .max, page: 0), count: count * SoftTLB.entries)
        empty = [Bool](repeating: true, count: count)
        stats = [TLBStats](repeating: TLBStats(), count: count)
    }

    public var count: Int { stats.count }

    /// CPU `cpu`'s cached translation of `va`, if it holds one (not counted).
    @inlinable public func entry(cpu: Int, _ va: UInt64) -> TLBEntry? {
        let vpn = va >> pageShift
        precondition(cpu >= 0 && cpu < empty.count, "no CPU \(cpu)")
        return SoftTLB.entry(slots.withUnsafeBufferPointer { $0[cpu &* SoftTLB.entries &+ SoftTLB.index(vpn)] }, vpn: vpn)
    }

    /// Caches a walk's result on CPU `cpu`.
    public mutating func fill(cpu: Int, _ va: UInt64, pa: UInt64, size: PageSize, attributes: Attributes) {
        slots[cpu * SoftTLB.entries + SoftTLB.index(va >> pageShift)] = SoftTLB.slot(va, pa: pa, size: size, attributes: attributes)
        empty[cpu] = false
    }

    public mutating func countHits(cpu: Int, _ n: UInt64) { stats[cpu].hits += n }
    public mutating func countMiss(cpu: Int) { stats[cpu].misses += 1 }

    /// Carries out one invalidation that reached CPU `cpu`, counted (as `SoftTLB.invalidate`).
    public mutating func invalidate(cpu: Int, _ op: TLBInvalidation) {
        switch op {
        case .all:
            stats[cpu].fullFlushes += 1
            guard !empty[cpu] else { return }
            empty[cpu] = true
        case .page: stats[cpu].pageFlushes += 1
        case .nonGlobal: stats[cpu].asidFlushes += 1
        }
        let base = cpu * SoftTLB.entries
        slots.withUnsafeMutableBufferPointer { SoftTLB.invalidate(op, UnsafeMutableBufferPointer(rebasing: $0[base..<base + SoftTLB.entries])) }
    }

    /// Carries out one invalidation on every CPU (a broadcast), counted on each. A page's,
    /// the common one, in one pass over the flat storage: no CPU's emptiness changes, so only
    /// the slots and counters are written.
    public mutating func invalidateEverywhere(_ op: TLBInvalidation) {
        let n = empty.count
        guard case .page = op else {
            for cpu in 0..<n { invalidate(cpu: cpu, op) }
            return
        }
        stats.withUnsafeMutableBufferPointer { stats in
            slots.withUnsafeMutableBufferPointer { slots in
                for cpu in 0..<n {
                    stats[cpu].pageFlushes += 1
                    let base = cpu &* SoftTLB.entries
                    SoftTLB.invalidate(op, UnsafeMutableBufferPointer(rebasing: slots[base..<base + SoftTLB.entries]))
                }
            }
        }
    }

    /// CPU `cpu` as a value: its TLB (a copy of its slots) and its counters.
    public func cpu(_ cpu: Int) -> CPU {
        var c = CPU(id: cpu)
        c.tlb = SoftTLB(slots: Array(slots[cpu * SoftTLB.entries..<(cpu + 1) * SoftTLB.entries]), isEmpty: empty[cpu])
        c.stats = stats[cpu]
        return c
    }
}
