import PageTables

/// An end-of-run assertion, named in a scenario's `check:` list.
public struct CheckDefinition: Sendable {
    public let name: String
    public let summary: String
    /// How it is written, for docs.
    public let usage: String
}

/// A comparison such as `<= 8M`: an operator and a number (sizes allowed).
struct Condition: Sendable, CustomStringConvertible {
    let op: String
    let value: UInt64

    static let operators = ["<=", ">=", "==", "!=", "<", ">"]

    static func parse(_ field: Field) throws(ScenarioError) -> Condition {
        let t = try field.text().trimmingCharacters(in: " ")
        let op = operators.first { t.hasPrefix($0) }
        let rest = op.map { String(t.dropFirst($0.count)) } ?? t
        guard let v = ByteSize.parse(rest) else {
            throw field.error("'\(t)' is not a condition; write an operator (\(operators.joined(separator: " "))) and a number, e.g. '<= 8M'")
        }
        return Condition(op: op ?? "==", value: v)
    }

    func holds(_ x: UInt64) -> Bool {
        switch op {
        case "<=": x <= value
        case ">=": x >= value
        case "!=": x != value
        case "<": x < value
        case ">": x > value
        default: x == value
        }
    }

    var description: String { "\(op) \(ByteSize.format(value))" }
}

/// The registry of checks.
public enum Checks {
    public static let all: [CheckDefinition] = [
        CheckDefinition(name: "no-errors", summary: "no operation returned an error, except where the step's expect names it", usage: "- no-errors"),
        CheckDefinition(name: "invariants", summary: "every registered invariant holds at the end", usage: "- invariants"),
        CheckDefinition(name: "directmap", summary: "DirectMap4k/2M/1G (bytes) meet conditions", usage: "- directmap: {4k: \"<= 8M\", 2m: \">= 1G\", 1g: \"== 23G\"}"),
        CheckDefinition(name: "metric", summary: "a metric of the run meets a condition", usage: "- metric: {tlb_full_flushes: \"<= 100\"}"),
    ]

    static func isError(_ result: String) -> Bool { result.hasPrefix("-E") || result.contains(" failed (first ") }

    static func prepare(_ item: Field) throws(ScenarioError) -> PreparedCheck {
        let line = item.node.mark?.line
        let names = all.map(\.name)
        if item.isScalar {
            let name = try item.choice(names, what: "check")
            switch name {
            case "no-errors":
                return PreparedCheck(name: name, description: "no-errors", line: line) { _, records in
                    let bad = records.filter { isError($0.result) && $0.expect != $0.result }
                    return (bad.isEmpty, bad.first.map { "step \($0.index) \($0.name) = \($0.result)" } ?? "")
                }
            case "invariants":
                return PreparedCheck(name: name, description: "invariants", line: line) { m, _ in
                    do throws(InvariantViolation) { try m.checkInvariants(); return (true, "") } catch { return (false, error.description) }
                }
            default:
                throw item.error("check '\(name)' needs arguments: \(all.first { $0.name == name }!.usage)")
            }
        }
        let fields = try item.mapping()
        guard fields.entries.count == 1, let (name, args) = fields.entries.first else {
            throw item.error("a check is one name with its arguments; valid checks: \(names.joined(separator: ", "))")
        }
        switch name {
        case "directmap":
            let conds = try args.mapping()
            try conds.only(["4k", "2m", "1g"])
            guard !conds.entries.isEmpty else { throw args.error("give at least one of 4k, 2m, 1g") }
            var parsed: [(String, Condition)] = []
            for (k, f) in conds.entries { parsed.append((k, try Condition.parse(f))) }
            let conditions = parsed
            let text = "directmap " + parsed.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
            return PreparedCheck(name: name, description: text, line: line) { m, _ in
                let c = m.kernel.directPagesCount
                var failures: [String] = []
                for (k, cond) in conditions {
                    let bytes: UInt64 = k == "4k" ? UInt64(c.size4K) << 12 : k == "2m" ? UInt64(c.size2M) << 21 : UInt64(c.size1G) << 30
                    if !cond.holds(bytes) { failures.append("\(k) is \(ByteSize.format(bytes))") }
                }
                return (failures.isEmpty, failures.joined(separator: ", "))
            }
        case "metric":
            let conds = try args.mapping()
            try conds.only(Machine.metricNames)
            guard !conds.entries.isEmpty else { throw args.error("name a metric; valid: \(Machine.metricNames.joined(separator: ", "))") }
            var parsed: [(String, Condition)] = []
            for (k, f) in conds.entries { parsed.append((k, try Condition.parse(f))) }
            let conditions = parsed
            let text = "metric " + parsed.map { "\($0.0) \($0.1.op) \($0.1.value)" }.joined(separator: ", ")
            return PreparedCheck(name: name, description: text, line: line) { m, _ in
                let metrics = m.metrics
                var failures: [String] = []
                for (k, cond) in conditions {
                    let v = metrics.first { $0.0 == k }!.1
                    if !cond.holds(v) { failures.append("\(k) is \(v)") }
                }
                return (failures.isEmpty, failures.joined(separator: ", "))
            }
        default:
            throw fields.entries[0].1.error("unknown check '\(name)'; valid checks: \(names.joined(separator: ", "))")
        }
    }
}
