/// One 64-bit page-table entry in cocomem's own encoding: none, a leaf, or a table pointer.
///
/// The layout is the same for every architecture, so one walker serves them all:
/// bits 0-15 hold `Attributes`, bits 16-55 the frame number of a leaf or the number of the
/// next-level table, bit 56 marks a table held compactly (see `CompactTable`), bit 61 marks
/// a not-present entry with an annotation (family in bits 48-55, payload in bits 0-47),
/// bit 62 marks a leaf and bit 63 a table. An entry of zero is none
/// (x86 pte_none, arm64 invalid with no software state). A leaf whose `present` attribute
/// is clear is still a leaf: it keeps its frame, as a PTE cleared by set_memory_np does.
public struct Descriptor: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    @usableFromInline static let leafBit: UInt64 = 1 << 62
    @usableFromInline static let tableBit: UInt64 = 1 << 63
    @usableFromInline static let frameShift: UInt64 = 16
    @usableFromInline static let frameMask: UInt64 = (1 << 40) - 1
    /// Table numbers carry one more bit than frames: `PageTable.compactTableFlag`.
    @usableFromInline static let tableMask: UInt64 = (1 << 41) - 1

    @usableFromInline static let annotationBit: UInt64 = 1 << 61

    /// The empty entry.
    public static let none = Descriptor(rawValue: 0)

    /// A not-present entry holding an architecture's annotation (an owner, a HIPAS/RIPAS,
    /// a Secure-EPT state): neither a leaf nor a table, so walks and translations pass over
    /// it as over an empty entry, but it is not `none`.
    @inlinable public static func annotated(_ a: Annotation) -> Descriptor {
        Descriptor(rawValue: annotationBit | UInt64(a.family.rawValue) << 48 | (a.payload & Annotation.payloadMask))
    }

    /// The annotation of a not-present annotated entry.
    @inlinable public var annotation: Annotation? {
        guard rawValue & Self.annotationBit != 0 else { return nil }
        return Annotation(AnnotationFamily(rawValue: UInt8(truncatingIfNeeded: rawValue >> 48)), payload: rawValue & Annotation.payloadMask)
    }

    /// A leaf mapping `frame` (the first 4K frame of the leaf) with `attributes`.
    @inlinable public static func leaf(_ frame: PFN, _ attributes: Attributes) -> Descriptor {
        Descriptor(rawValue: leafBit | (frame.rawValue & frameMask) << frameShift | UInt64(attributes.rawValue))
    }

    /// A pointer to table number `table`.
    @inlinable public static func table(_ table: Int) -> Descriptor {
        Descriptor(rawValue: tableBit | (UInt64(table) & tableMask) << frameShift)
    }

    @inlinable public var isNone: Bool { rawValue == 0 }
    @inlinable public var isLeaf: Bool { rawValue & Self.leafBit != 0 }
    @inlinable public var isTable: Bool { rawValue & Self.tableBit != 0 }
    /// A leaf whose present attribute is set.
    @inlinable public var isPresentLeaf: Bool { isLeaf && attributes.contains(.present) }

    /// The first frame a leaf maps.
    @inlinable public var frame: PFN { PFN((rawValue >> Self.frameShift) & Self.frameMask) }
    /// The table a table entry points to.
    @inlinable public var tableNumber: Int { Int((rawValue >> Self.frameShift) & Self.tableMask) }
    @inlinable public var attributes: Attributes { Attributes(rawValue: UInt16(truncatingIfNeeded: rawValue)) }

    /// This leaf with other attributes.
    @inlinable public func with(attributes: Attributes) -> Descriptor {
        Descriptor(rawValue: (rawValue & ~0xffff) | UInt64(attributes.rawValue))
    }

    public var description: String {
        if isNone { return "none" }
        if let a = annotation { return "\(a)" }
        if isTable {
            let n = tableNumber
            return PageTable.compactIndex(n).map { "compact table \($0)" } ?? "table \(n)"
        }
        return "leaf \(hex(frame.rawValue << pageShift)) \(attributes)"
    }
}
