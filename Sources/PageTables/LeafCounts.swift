/// How many leaves of each size a table holds (present or not).
public struct LeafCounts: Hashable, Sendable, CustomStringConvertible {
    public var size4K: Int = 0
    public var size2M: Int = 0
    public var size1G: Int = 0

    public init(size4K: Int = 0, size2M: Int = 0, size1G: Int = 0) {
        self.size4K = size4K
        self.size2M = size2M
        self.size1G = size1G
    }

    @inlinable public subscript(size: PageSize) -> Int {
        get {
            switch size {
            case .size4K: size4K
            case .size2M: size2M
            case .size1G: size1G
            }
        }
        set {
            switch size {
            case .size4K: size4K = newValue
            case .size2M: size2M = newValue
            case .size1G: size1G = newValue
            }
        }
    }

    /// Bytes mapped by all these leaves.
    public var bytes: UInt64 {
        PageSize.allCases.reduce(0) { $0 + UInt64(self[$1]) * $1.bytes }
    }

    public var description: String { "4K:\(size4K) 2M:\(size2M) 1G:\(size1G)" }
}
