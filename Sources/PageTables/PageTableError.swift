/// Why a page-table operation stopped.
///
/// Argument errors are raised before anything changes. `outOfMemory` can come part way
/// through a range: the leaves done before it stay changed, as they do in the kernel when
/// split_large_page fails inside __change_page_attr_set_clr; the failed split itself never
/// leaves a half-built table.
public enum PageTableError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An address or size that is not a multiple of 4K.
    case unaligned(what: String, value: UInt64)
    /// A range that is empty, wraps, or leaves the table's address space.
    case badRange(start: UInt64, size: UInt64)
    /// A page-table page could not be allocated (the kernel's -ENOMEM).
    case outOfMemory
    /// The operation needs a leaf and the address has none.
    case notMapped(UInt64)

    public var description: String {
        switch self {
        case .unaligned(let what, let value): "\(what) \(hex(value)) is not 4K-aligned"
        case .badRange(let start, let size): "range \(hex(start)) + \(hex(size)) is empty or outside the table"
        case .outOfMemory: "no memory for a page-table page"
        case .notMapped(let a): "\(hex(a)) is not mapped"
        }
    }
}
