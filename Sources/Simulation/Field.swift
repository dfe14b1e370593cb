import PageTables
import Yams

/// One node of a scenario document with its path and place, and typed readers that fail
/// with a `ScenarioError` naming the file, line, column and field.
public struct Field: @unchecked Sendable {
    let node: Node
    /// Dotted path from the document root, e.g. `steps[2].vmap.pa`.
    public let path: String
    public let file: String

    init(node: Node, path: String, file: String) {
        self.node = node
        self.path = path
        self.file = file
    }

    /// An error at this node.
    public func error(_ message: String) -> ScenarioError {
        ScenarioError(file: file, line: node.mark?.line, column: node.mark?.column, field: path, message)
    }

    public var isMapping: Bool { if case .mapping = node { true } else { false } }
    public var isScalar: Bool { if case .scalar = node { true } else { false } }

    /// The raw text of a scalar.
    public func text() throws(ScenarioError) -> String {
        guard case .scalar(let s) = node else { throw error("expected a single value, found \(kind)") }
        return s.string
    }

    /// A mapping's entries in document order; keys must be plain strings and unique.
    public func mapping() throws(ScenarioError) -> Fields {
        guard case .mapping(let m) = node else { throw error("expected a mapping (key: value), found \(kind)") }
        var entries: [(String, Field)] = []
        var keys: [Field] = []
        var seen = Set<String>()  // membership only: the entries keep document order
        for (k, v) in m {
            guard case .scalar(let ks) = k else {
                throw Field(node: k, path: path, file: file).error("keys must be plain names")
            }
            let key = ks.string
            guard seen.insert(key).inserted else {
                throw Field(node: k, path: join(key), file: file).error("'\(key)' appears twice")
            }
            entries.append((key, Field(node: v, path: join(key), file: file)))
            keys.append(Field(node: k, path: join(key), file: file))
        }
        return Fields(entries: entries, keys: keys, owner: self)
    }

    /// A sequence's items.
    public func sequence() throws(ScenarioError) -> [Field] {
        guard case .sequence(let s) = node else { throw error("expected a list, found \(kind)") }
        return s.enumerated().map { Field(node: $1, path: "\(path)[\($0 + 1)]", file: file) }
    }

    /// A number: decimal, 0x hex, or a size such as 4K, 2M, 1G, 3G-1M.
    public func number() throws(ScenarioError) -> UInt64 {
        let t = try text()
        guard let v = ByteSize.parse(t) else {
            throw error("'\(t)' is not a number; write decimal, hex (0x…) or a size (4K, 2M, 1G, 3G-1M)")
        }
        return v
    }

    /// A number in `range`.
    public func number(in range: ClosedRange<UInt64>, what: String) throws(ScenarioError) -> UInt64 {
        let v = try number()
        guard range.contains(v) else {
            throw error("\(what) \(v) is out of range; valid: \(range.lowerBound) to \(range.upperBound)")
        }
        return v
    }

    public func bool() throws(ScenarioError) -> Bool {
        switch try text() {
        case "true": return true
        case "false": return false
        case let t: throw error("'\(t)' is not true or false")
        }
    }

    /// One of `choices`.
    public func choice(_ choices: [String], what: String) throws(ScenarioError) -> String {
        let t = try text()
        guard choices.contains(t) else {
            throw error("unknown \(what) '\(t)'" + Suggest.hint(t, in: choices, listedBy: "docs/SCENARIOS.md"))
        }
        return t
    }

    var kind: String {
        switch node {
        case .scalar(let s): "the value '\(s.string)'"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    func join(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// `[start, start + size)` for a start this field gave, or an error at this field when
    /// the sum wraps past 2^64 (every sum of user numbers is checked; nothing wraps).
    public func range(_ start: UInt64, size: UInt64) throws(ScenarioError) -> Range<UInt64> {
        let (end, overflow) = start.addingReportingOverflow(size)
        guard !overflow else { throw error("\(hex(start)) + \(hex(size)) bytes wraps past the top of the 64-bit address space") }
        return start..<end
    }
}

/// The entries of a mapping, with lookups that report missing and unknown keys.
public struct Fields: Sendable {
    public let entries: [(String, Field)]
    /// The key nodes, parallel to `entries`, for errors that point at a key.
    let keys: [Field]
    public let owner: Field

    /// An error pointing at the key `key` itself.
    public func keyError(_ key: String, _ message: String) -> ScenarioError {
        (keys.first { $0.path == owner.join(key) } ?? owner).error(message)
    }

    public subscript(key: String) -> Field? { entries.first { $0.0 == key }?.1 }

    public func required(_ key: String) throws(ScenarioError) -> Field {
        guard let f = self[key] else { throw owner.error("'\(key)' is required") }
        return f
    }

    /// Refuses any key not in `allowed`, listing the valid ones.
    public func only(_ allowed: [String]) throws(ScenarioError) {
        for (key, _) in entries where !allowed.contains(key) {
            throw keyError(key, "unknown field '\(key)'" + Suggest.hint(key, in: allowed, listedBy: "docs/SCENARIOS.md"))
        }
    }
}
