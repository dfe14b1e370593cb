import PageTables

/// Arm MTE allocation tags: four bits per 16-byte granule of physical memory, 256 granules
/// (128 bytes) per 4K page, held only for pages whose tags are not all zero, so a page
/// without tags costs nothing. Arm ARM D10 (The Memory Tagging Extension); Linux
/// arch/arm64/include/asm/mte-def.h (MTE_GRANULE_SIZE 16, MTE_TAG_SIZE 4).
public struct MTETags: Hashable, Sendable {
    public static let granulesPerPage = 256
    /// One page's tags, packed two to a byte.
    public struct Page: Hashable, Sendable {
        public var bytes = [UInt8](repeating: 0, count: 128)
        public init() {}
        public init(all tag: UInt8) { bytes = [UInt8](repeating: (tag & 0xf) | (tag & 0xf) << 4, count: 128) }
        public subscript(granule: Int) -> UInt8 {
            get { granule & 1 == 0 ? bytes[granule >> 1] & 0xf : bytes[granule >> 1] >> 4 }
            set {
                let b = bytes[granule >> 1]
                bytes[granule >> 1] = granule & 1 == 0 ? (b & 0xf0) | (newValue & 0xf) : (b & 0x0f) | (newValue & 0xf) << 4
            }
        }
        public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }
        /// The 128 bytes hashed as one block (not byte by byte).
        public func hash(into h: inout Hasher) { bytes.withUnsafeBytes { h.combine(bytes: $0) } }
        /// Copies the tags of `granules` from `source`: byte by byte (two granules a byte)
        /// when the range starts and ends on a byte, else granule by granule.
        public mutating func copy(from source: Page, granules range: Range<Int>) {
            guard range.lowerBound & 1 == 0, range.upperBound & 1 == 0 else {
                for g in range { self[g] = source[g] }
                return
            }
            bytes.withUnsafeMutableBufferPointer { d in
                source.bytes.withUnsafeBufferPointer { s in for i in range.lowerBound >> 1..<range.upperBound >> 1 { d[i] = s[i] } }
            }
        }
        /// `tag ×256` when every granule holds one tag, else the first granules and a count.
        public var summary: String {
            let first = self[0]
            if (0..<MTETags.granulesPerPage).allSatisfy({ self[$0] == first }) { return "\(hex(UInt64(first))) ×256" }
            return (0..<8).map { hex(UInt64(self[$0])) }.joined(separator: " ") + " … (mixed)"
        }
    }

    var pages = DigestedDictionary<UInt64, Page>()
    /// A digest of every page's tags, kept as they change once `track()` is called (the explorer).
    public var digest: UInt64 { pages.digest }
    public mutating func track() { pages.track() }
    public init() {}

    /// The tags of a page (all zero when none are held).
    public func page(_ pfn: UInt64) -> Page { pages[pfn] ?? Page() }
    /// Sets a page's tags (STG/STZG over it, or a restore); zero tags hold nothing.
    public mutating func set(_ pfn: UInt64, _ page: Page) { pages[pfn] = page.isZero ? nil : page }
    /// mte_clear_page_tags: every granule's tag zero (DC GZVA).
    public mutating func clear(_ pfn: UInt64) { pages[pfn] = nil }
    /// mte_copy_page_tags.
    public mutating func copy(from: UInt64, to: UInt64) { pages[to] = pages[from] }
    /// Pages holding a non-zero tag.
    public var tagged: Int { pages.count }

    /// A tag-checked access to `pa` with the pointer's logical tag: equal to the granule's
    /// allocation tag, or a tag check fault. Arm ARM D10.5.
    public func check(pa: UInt64, logicalTag: UInt8) -> Bool {
        page(pa >> 12)[Int((pa & 0xfff) >> 4)] == logicalTag & 0xf
    }
}
