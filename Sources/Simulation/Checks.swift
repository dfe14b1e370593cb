import Hardware
import PageTables

/// An end-of-run assertion, named in a scenario's `check:` list.
public struct CheckDefinition: Sendable {
    public let name: String
    public let summary: String
    /// How it is written, for docs.
    public let usage: String
    /// Written as a bare name (`- invariants`), with no arguments.
    public var takesNoArguments: Bool { usage == "- " + name }
}

/// A comparison such as `<= 8M`: an operator and a number (sizes allowed).
struct Condition: Sendable {
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
}

/// The registry of checks.
public enum Checks {
    public static let all: [CheckDefinition] = [
        CheckDefinition(name: "no-errors", summary: "no operation returned an error, except where the step's expect names it", usage: "- no-errors"),
        CheckDefinition(name: "invariants", summary: "every registered invariant holds at the end", usage: "- invariants"),
        CheckDefinition(name: "no-host-crash", summary: "no host access ended in an oops, a double or triple fault or a recursive abort", usage: "- no-host-crash"),
        CheckDefinition(name: "directmap", summary: "DirectMap4k/2M/1G (bytes) meet conditions", usage: "- directmap: {4k: \"<= 8M\", 2m: \">= 1G\", 1g: \"== 23G\"}"),
        CheckDefinition(name: "metric", summary: "a metric of the run meets a condition", usage: "- metric: {tlb_full_flushes: \"<= 100\"}"),
        CheckDefinition(name: "broken-invariant", summary: "the named invariant is violated at the end (a scenario that shows a bug; --check leaves it out after each step)",
                        usage: "- broken-invariant: tlb"),
    ]

    static func prepare(_ item: Field, architecture: ArchitectureDefinition, cpus: Int, mte: Bool = false) throws(ScenarioError) -> PreparedCheck {
        let line = item.node.mark?.line
        let names = all.map(\.name)
        if item.isScalar {
            let name = try item.text()
            guard names.contains(name) else { throw item.error("unknown check '\(name)'" + Suggest.hint(name, in: names, listedBy: "'cocomem list checks'")) }
            switch name {
            case "no-errors":
                return PreparedCheck(name: name, description: "no-errors", line: line) { _, records in
                    let bad = records.filter { $0.outcome.isError && $0.passed != true }
                    return (bad.isEmpty, bad.first.map { "step \($0.index) \($0.name) = \($0.result)" } ?? "")
                }
            case "no-host-crash":
                return PreparedCheck(name: name, description: "no-host-crash", line: line) { m, _ in
                    let n = m.kernel.faults.hostCrashes
                    return (n == 0, n == 0 ? "" : "\(n) host access\(n == 1 ? "" : "es") crashed the host")
                }
            case "invariants":
                return PreparedCheck(name: name, description: "invariants", line: line, walksEveryInvariant: true) { m, _ in
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
        if all.contains(where: { $0.name == name && $0.takesNoArguments }) {
            throw fields.keyError(name, "check '\(name)' takes no arguments; write it as '- \(name)'")
        }
        switch name {
        case "directmap":
            return try conditionCheck(name, args, line: line, keys: ["4k", "2m", "1g"], show: ByteSize.format) { m in
                let c = m.kernel.directPagesCount
                return [("4k", UInt64(c.size4K) << 12), ("2m", UInt64(c.size2M) << 21), ("1g", UInt64(c.size1G) << 30)]
            }
        case "metric":
            let metricNames = Machine.metricInfo(architecture, cpus: cpus, mte: mte).map(\.name)
            let given = try args.mapping()
            for (key, _) in given.entries where !metricNames.contains(key) {
                let elsewhere = Architectures.all.filter { $0.metrics.contains { $0.name == key } }.map(\.name)
                throw given.keyError(key, "unknown metric '\(key)'" + (elsewhere.isEmpty
                    ? Suggest.hint(key, in: metricNames, listedBy: "'cocomem list metrics'")
                    : "; it is reported on \(elsewhere.joined(separator: ", ")), and this machine is \(architecture.name)"))
            }
            let wanted = given.entries.map(\.0)
            return try conditionCheck(name, args, line: line, keys: metricNames, show: { String($0) }) { m in
                // A loop, not a closure that captures the machine (which would copy it).
                var values: [(String, UInt64)] = []
                for name in wanted { values.append((name, m.metric(named: name))) }
                return values
            }
        case "broken-invariant":
            let invariants = Invariants.of(architecture), known = invariants.map(\.name)
            let wanted = try args.text()
            guard let invariant = invariants.first(where: { $0.name == wanted }) else {
                throw args.error("unknown invariant '\(wanted)' on \(architecture.name)" + Suggest.hint(wanted, in: known, listedBy: "'cocomem list invariants'"))
            }
            var check = PreparedCheck(name: name, description: "broken-invariant \(wanted)", line: line) { m, _ in
                do throws(InvariantViolation) { try invariant.check(m); return (false, "'\(wanted)' holds") } catch { return (true, error.description) }
            }
            check.brokenInvariant = wanted
            return check
        default:
            throw fields.keyError(name, "unknown check '\(name)'" + Suggest.hint(name, in: names, listedBy: "'cocomem list checks'"))
        }
    }

    /// A check of `key: "<condition>"` pairs against named values of the final machine;
    /// `show` prints a value in a failure message.
    static func conditionCheck(
        _ name: String, _ args: Field, line: Int?, keys: [String], show: @escaping @Sendable (UInt64) -> String,
        values: @escaping @Sendable (Machine) -> [(String, UInt64)]
    ) throws(ScenarioError) -> PreparedCheck {
        let fields = try args.mapping()
        try fields.only(keys)
        guard !fields.entries.isEmpty else { throw args.error("give at least one of: \(keys.joined(separator: ", "))") }
        var parsed: [(String, Condition)] = []
        for (k, f) in fields.entries { parsed.append((k, try Condition.parse(f))) }
        let conditions = parsed
        let text = "\(name) " + parsed.map { "\($0.0) \($0.1.op) \(show($0.1.value))" }.joined(separator: ", ")
        return PreparedCheck(name: name, description: text, line: line) { m, _ in
            let all = values(m)
            let failures = conditions.compactMap { k, cond -> String? in
                let v = all.first { $0.0 == k }!.1
                return cond.holds(v) ? nil : "\(k) is \(show(v))"
            }
            return (failures.isEmpty, failures.joined(separator: ", "))
        }
    }
}
