import PageTables

/// A direct-mapped software TLB, as QEMU's accel/tcg/cputlb.c keeps one: 256 entries indexed
/// by the low bits of the virtual page number, one comparison decides a hit. An entry holds
/// the 4K page's translation, the size of the leaf it came from (the RMP check of a write
/// through a 2M or 1G leaf looks at the whole 2M region) and the leaf's attributes as the
/// walk found them (a stale entry keeps the old permissions and encryption bit, as a real
/// TLB does until it is invalidated).
///
/// One address-space context at a time: the kernel's global entries and the current
/// process's (a context switch without ASIDs would flush the rest), so TLBI by ASID
/// removes the non-global entries.
public struct SoftTLB: Sendable {
    public static let entries = 256

    /// One entry: the virtual page number it holds (all ones when empty) and the physical page
    /// base with the leaf's level in bits 0-1 and its attributes (`Attributes` bits 0-9) in
    /// bits 2-11. Two words, so a hit reads one cache line.
    @usableFromInline struct Slot: Sendable {
        @usableFromInline var tag: UInt64
        @usableFromInline var page: UInt64
        @usableFromInline init(tag: UInt64, page: UInt64) { self.tag = tag; self.page = page }
    }

    @usableFromInline var slots: [Slot]
    /// False once anything was filled since the last full flush (a full flush of an empty
    /// TLB touches nothing).
    @usableFromInline var isEmpty = true

    public init() { slots = [Slot](repeating: Slot(tag: .max, page: 0), count: Self.entries) }

    /// A TLB holding these slots (one CPU's part of a `CPUSet`).
    init(slots: [Slot], isEmpty: Bool) {
        self.slots = slots
        self.isEmpty = isEmpty
    }

    @usableFromInline static let attributeShift: UInt64 = 2
    @usableFromInline static let attributeMask: UInt64 = 0x3ff

    /// The slot that holds virtual page `vpn`.
    @inlinable static func index(_ vpn: UInt64) -> Int { Int(truncatingIfNeeded: vpn) & (entries - 1) }

    /// What slot `s` caches for virtual page `vpn`, if it holds that page.
    @inlinable static func entry(_ s: Slot, vpn: UInt64) -> TLBEntry? {
        s.tag == vpn ? TLBEntry(va: vpn << pageShift, page: s.page) : nil
    }

    /// The slot caching the translation of `va`'s page to `pa`'s, from a leaf of `size` with
    /// `attributes`.
    @inlinable static func slot(_ va: UInt64, pa: UInt64, size: PageSize, attributes: Attributes) -> Slot {
        let bits = (UInt64(attributes.rawValue) & attributeMask) << attributeShift
        return Slot(tag: va >> pageShift, page: (pa & ~(pageBytes - 1)) | bits | UInt64(size.rawValue))
    }

    /// Carries out `op` on one TLB's 256 slots (a SoftTLB's own, or one CPU's in a CPUSet).
    static func invalidate(_ op: TLBInvalidation, _ slots: UnsafeMutableBufferPointer<Slot>) {
        switch op {
        case .all:
            for i in slots.indices { slots[i].tag = .max }
        case .page(let va):
            let vpn = va >> pageShift, i = index(vpn)
            if slots[i].tag == vpn { slots[i].tag = .max }
        case .nonGlobal:
            for i in slots.indices where slots[i].tag != .max && !TLBEntry(va: 0, page: slots[i].page).attributes.contains(.global) {
                slots[i].tag = .max
            }
        }
    }

    /// The physical address for `va`, if the TLB holds its page.
    @inlinable public func lookup(_ va: UInt64) -> UInt64? {
        let vpn = va >> pageShift
        // The index is masked below `entries` and `slots` never changes size: no bounds check.
        let s = slots.withUnsafeBufferPointer { $0[Self.index(vpn)] }
        return s.tag == vpn ? (s.page & ~(pageBytes - 1)) | (va & (pageBytes - 1)) : nil
    }

    /// The whole cached translation of `va`'s page, if the TLB holds it.
    @inlinable public func entry(_ va: UInt64) -> TLBEntry? {
        let vpn = va >> pageShift
        return Self.entry(slots.withUnsafeBufferPointer { $0[Self.index(vpn)] }, vpn: vpn)
    }

    /// The size of the leaf `va`'s cached translation came from.
    @inlinable public func leafSize(_ va: UInt64) -> PageSize? { entry(va)?.size }

    /// Caches the translation of `va`'s page: `pa` is the physical address of `va` (or of
    /// its page), `attributes` those of the leaf.
    @inlinable public mutating func fill(_ va: UInt64, pa: UInt64, size: PageSize, attributes: Attributes = [.present]) {
        slots[Self.index(va >> pageShift)] = Self.slot(va, pa: pa, size: size, attributes: attributes)
        isEmpty = false
    }

    /// Carries out one invalidation: everything, global entries included (flush_tlb_all;
    /// TLBI VMALLE1), one page whatever its leaf size (INVLPG; TLBI VAAE1), or the current
    /// ASID's non-global entries (TLBI ASIDE1). A full flush of an empty TLB touches nothing.
    public mutating func invalidate(_ op: TLBInvalidation) {
        if case .all = op {
            guard !isEmpty else { return }
            isEmpty = true
        }
        slots.withUnsafeMutableBufferPointer { Self.invalidate(op, $0) }
    }

    /// The valid entries, in slot order.
    public var validEntries: [TLBEntry] {
        slots.compactMap { $0.tag == .max ? nil : TLBEntry(va: $0.tag << pageShift, page: $0.page) }
    }

    /// The slots as pairs of words (tag, page | level), for the C reference benchmarks run on
    /// the same layout.
    public func withStorage<R>(_ body: (UnsafePointer<UInt64>) -> R) -> R {
        slots.withUnsafeBufferPointer { $0.withMemoryRebound(to: UInt64.self) { body($0.baseAddress!) } }
    }
}

/// One cached translation: a 4K virtual page, the physical page it reaches, the size of the
/// leaf it came from and that leaf's attributes.
public struct TLBEntry: Hashable, Sendable, CustomStringConvertible {
    /// The virtual page's first address.
    public let va: UInt64
    @usableFromInline let page: UInt64

    @inlinable init(va: UInt64, page: UInt64) { self.va = va; self.page = page }

    /// The physical page's first address.
    @inlinable public var pa: UInt64 { page & ~(pageBytes - 1) }
    @inlinable public var size: PageSize { PageSize(rawValue: Int(page & 3))! }
    @inlinable public var attributes: Attributes {
        Attributes(rawValue: UInt16(truncatingIfNeeded: (page >> SoftTLB.attributeShift) & SoftTLB.attributeMask))
    }
    public var description: String { "\(hex(va)) -> \(hex(pa)) \(size) \(attributes)" }
}
