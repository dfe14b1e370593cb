/// Descriptor attributes, independent of architecture: what a leaf permits and how it maps.
///
/// A RawRepresentable set with named members, in the shape of swift-system's
/// FilePermissions. Each architecture's encoder maps these onto its own bits (x86:
/// Intel SDM Vol 3 §4.5 table 4-19/4-20 and AMD APM Vol 2 §7.10 for the C-bit; arm64: Arm ARM
/// D8.3).
public struct Attributes: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// x86 _PAGE_PRESENT / arm64 valid bit.
    @inlinable public static var present: Attributes { Attributes(rawValue: 1 << 0) }
    /// x86 _PAGE_RW / arm64 AP[2] clear.
    @inlinable public static var writable: Attributes { Attributes(rawValue: 1 << 1) }
    /// x86 _PAGE_USER / arm64 AP[1].
    @inlinable public static var user: Attributes { Attributes(rawValue: 1 << 2) }
    /// x86 _PAGE_NX / arm64 PXN|UXN.
    @inlinable public static var noExecute: Attributes { Attributes(rawValue: 1 << 3) }
    /// x86 _PAGE_GLOBAL / arm64 nG clear.
    @inlinable public static var global: Attributes { Attributes(rawValue: 1 << 4) }
    // Bits 5-6 hold the MemoryType (see `memoryType`).
    /// x86 C-bit (_PAGE_ENC, sme_me_mask): the page is accessed encrypted with the owner's key.
    @inlinable public static var encrypted: Attributes { Attributes(rawValue: 1 << 7) }
    /// TDX shared GPA bit / Arm CCA NS-shared (top IPA bit): the page is shared with the host.
    @inlinable public static var shared: Attributes { Attributes(rawValue: 1 << 8) }
    /// Arm MTE: Normal-Tagged memory attribute (MAIR 0xf0).
    @inlinable public static var tagged: Attributes { Attributes(rawValue: 1 << 9) }
    /// x86 _PAGE_SPECIAL / arm64 PTE_SPECIAL: no struct page behind the mapping.
    @inlinable public static var special: Attributes { Attributes(rawValue: 1 << 10) }
    /// x86 _PAGE_KERNEL_4K (software bit 3): split by set_memory_4k, never collapse again.
    /// Linux arch/x86/mm/pat/set_memory.c, set_memory_4k (CPA_COLLAPSE series, 2025).
    @inlinable public static var forced4K: Attributes { Attributes(rawValue: 1 << 11) }
    /// Software bits for later layers (x86 _PAGE_SOFTW*, arm64 PTE SW bits 55-58: pKVM keeps
    /// a page's share state in two of them up to 6.13): kept by every change that does not
    /// name them.
    @inlinable public static var software1: Attributes { Attributes(rawValue: 1 << 12) }
    @inlinable public static var software2: Attributes { Attributes(rawValue: 1 << 13) }
    /// arm64 PTE_CONT: one of 16 adjacent, aligned entries that map a contiguous range with
    /// the same attributes, so one TLB entry may hold them all (64K of PTEs, 32M of PMDs with
    /// a 4K granule). Arm ARM D8.6.1.
    @inlinable public static var contiguous: Attributes { Attributes(rawValue: 1 << 14) }
    /// x86 _PAGE_DIRTY (bit 6) / arm64 the DBM-writable-and-written state: the page was
    /// written through this entry. User PTEs carry it (pte_mkdirty); kernel mappings ignore it.
    @inlinable public static var dirty: Attributes { Attributes(rawValue: 1 << 15) }

    @usableFromInline static let memoryTypeShift: UInt16 = 5
    @usableFromInline static let memoryTypeMask: UInt16 = 0b11 << memoryTypeShift

    /// The memory type carried in bits 5-6.
    @inlinable public var memoryType: MemoryType {
        get { MemoryType(rawValue: UInt8((rawValue & Self.memoryTypeMask) >> Self.memoryTypeShift))! }
        set { rawValue = (rawValue & ~Self.memoryTypeMask) | (UInt16(newValue.rawValue) << Self.memoryTypeShift) }
    }

    /// These attributes with a different memory type.
    @inlinable public func with(memoryType: MemoryType) -> Attributes {
        var copy = self
        copy.memoryType = memoryType
        return copy
    }

    /// The x86 kernel's PAGE_KERNEL: present, RW, NX, global, write-back; the C-bit when the
    /// host runs with memory encryption. Linux arch/x86/include/asm/pgtable_types.h.
    public static func pageKernel(encrypted: Bool) -> Attributes {
        var a: Attributes = [.present, .writable, .noExecute, .global]
        if encrypted { a.insert(.encrypted) }
        return a
    }

    private static let names: [(Attributes, String)] = [
        (.present, "present"), (.writable, "rw"), (.user, "user"), (.noExecute, "nx"),
        (.global, "global"), (.encrypted, "enc"), (.shared, "shared"), (.tagged, "tagged"),
        (.special, "special"), (.forced4K, "forced-4k"), (.software1, "sw1"), (.software2, "sw2"), (.contiguous, "cont"), (.dirty, "dirty"),
    ]

    public var description: String {
        var parts = Self.names.filter { contains($0.0) }.map(\.1)
        if memoryType != .writeBack { parts.append(memoryType.description) }
        return "[" + parts.joined(separator: " ") + "]"
    }
}
