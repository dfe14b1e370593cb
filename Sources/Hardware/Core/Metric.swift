/// A counter a layer declares: its name in reports, its unit and what it means.
public struct MetricInfo: Hashable, Sendable {
    public let name: String
    public let unit: String
    public let summary: String
    public init(_ name: String, _ unit: String, _ summary: String) {
        self.name = name
        self.unit = unit
        self.summary = summary
    }
}

/// A metric of a stats type: its declaration and how to read it. Each stats type keeps one
/// list of these, so the names, their meaning and their values never drift apart.
public struct Metric<Root>: Sendable {
    public let info: MetricInfo
    public let read: @Sendable (Root) -> UInt64

    public init(_ name: String, _ unit: String, _ summary: String, _ read: @escaping @Sendable (Root) -> UInt64) {
        self.info = MetricInfo(name, unit, summary)
        self.read = read
    }

    /// The same metric read through a path from an outer value.
    public func pulled<Outer>(_ path: @escaping @Sendable (Outer) -> Root) -> Metric<Outer> {
        let read = self.read
        return Metric<Outer>(info: info) { read(path($0)) }
    }

    init(info: MetricInfo, _ read: @escaping @Sendable (Root) -> UInt64) {
        self.info = info
        self.read = read
    }
}

extension Array {
    /// The values of these metrics for `root`, in order.
    public func values<Root>(_ root: Root) -> [(String, UInt64)] where Element == Metric<Root> {
        map { ($0.info.name, $0.read(root)) }
    }
}
