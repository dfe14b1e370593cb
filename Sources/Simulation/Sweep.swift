import Yams

/// A sweep: scenario files and the axes to vary over them, expanded to runs in a fixed order
/// (scenario by scenario, then the axes as the matrix lists them, the last varying fastest).
/// Each run is a scenario document with the axes' values written into it, so it loads,
/// checks and runs exactly as a file of its own would. docs/sweeps.md.
public struct SweepMatrix: Sendable {
    public let name: String
    public let axes: [(name: String, values: [String])]
    public let runs: [SweepRun]
    /// FNV-1a (64-bit) of every run's document and parameters: shards of one matrix carry
    /// the same, and `merge` refuses lines of another.
    public let hash: String

    /// The axis kinds, for errors and docs.
    public static let axisKinds = [
        "seed", "memory", "arch", "guests", "machine.KEY", "workload.PARAMETER", "a policy slot (e.g. host.directmap-policy)",
    ]

    /// Reads a matrix. `read` reads a scenario file by the path the matrix gives (relative to
    /// the matrix's folder, which the caller resolves).
    public init(yaml text: String, file: String, read: (String) throws -> String) throws(ScenarioError) {
        func failure(_ field: String, _ m: String, _ node: Node? = nil) -> ScenarioError {
            ScenarioError(file: file, line: node?.mark.map { $0.line }, column: node?.mark.map { $0.column }, field: field, m)
        }
        guard text.utf8.count <= Scenario.maxBytes else { throw failure("", "the matrix is \(text.utf8.count) bytes; at most \(Scenario.maxBytes) are read") }
        if let problem = YAMLPrescan.check(text, maxFlowDepth: Scenario.maxFlowDepth) {
            throw ScenarioError(file: file, line: problem.line, column: nil, field: "", problem.message)
        }
        let root: Node
        do {
            guard let n = try Yams.compose(yaml: text) else { throw failure("", "the matrix is empty") }
            root = n
        } catch let e as ScenarioError { throw e } catch let e as YamlError {
            throw Scenario.yamlError(e, file: file)
        } catch { throw failure("", "cannot read YAML: \(error)") }
        guard let top = root.mapping else { throw failure("", "a matrix is a mapping with name, scenarios and axes", root) }
        for key in top.keys {
            guard let k = key.string, ["name", "scenarios", "axes"].contains(k) else {
                throw failure(key.string ?? "?", "unknown field '\(key.string ?? "?")'; valid: name, scenarios, axes", key)
            }
        }
        name = top["name"]?.string ?? "sweep"
        guard let files = top["scenarios"]?.sequence, !files.isEmpty else {
            throw failure("scenarios", "give the scenario files to sweep, as a list (scenarios: [a.yaml, b.yaml])", top["scenarios"] ?? root)
        }
        var axes: [(name: String, values: [String], node: Node)] = []
        if let a = top["axes"] {
            guard let m = a.mapping else { throw failure("axes", "axes is a mapping from an axis to its values (seed: [1, 2, 3])", a) }
            for (k, v) in m {
                guard let key = k.string else { throw failure("axes", "an axis name is text", k) }
                let values: [Node] = v.sequence.map(Array.init) ?? [v]
                guard !values.isEmpty else { throw failure("axes.\(key)", "the axis has no values; give at least one", v) }
                var texts: [String] = []
                for value in values {
                    guard let s = value.scalar?.string else { throw failure("axes.\(key)", "an axis value is a single value (a number, a size, a name)", value) }
                    texts.append(s)
                }
                axes.append((key, texts, k))
            }
        }
        self.axes = axes.map { ($0.name, $0.values) }
        var runs: [SweepRun] = []
        var hasher = FNV1a()
        for (i, f) in files.enumerated() {
            guard let path = f.string else { throw failure("scenarios[\(i)]", "a scenario is a file name", f) }
            let source: String
            do { source = try read(path) } catch { throw ScenarioError(file: file, line: f.mark?.line, column: f.mark?.column, field: "scenarios[\(i)]", "\(error)") }
            let base: Node
            do {
                guard let n = try Yams.compose(yaml: source) else { throw failure("scenarios[\(i)]", "\(path) is empty", f) }
                base = n
            } catch let e as ScenarioError { throw e } catch let e as YamlError { throw Scenario.yamlError(e, file: path) } catch {
                throw ScenarioError(file: path, line: nil, column: nil, field: "", "cannot read YAML: \(error)")
            }
            // Every combination, the last axis fastest.
            var combination = [Int](repeating: 0, count: axes.count)
            repeat {
                var doc = base
                var overrides: [(String, String)] = []
                var params: [(String, String)] = []
                for (a, axis) in axes.enumerated() {
                    let value = axis.values[combination[a]]
                    params.append((axis.name, value))
                    try Self.apply(axis.name, value, to: &doc, overrides: &overrides, matrixFile: file, node: axis.node, scenario: path)
                }
                let text: String
                do { text = try Yams.serialize(node: doc) } catch { throw failure("scenarios[\(i)]", "cannot write the run's document: \(error)", f) }
                let label = "\(path) " + params.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
                func load(_ overrides: [(String, String)]) throws(ScenarioError) -> Scenario {
                    do { return try Scenario.load(yaml: text, file: label, policyOverrides: overrides) } catch {
                        throw ScenarioError(file: file, line: f.mark?.line, column: nil, field: "scenarios[\(i)]",
                                            "run \(runs.count) (\(label)): \(error.message)")
                    }
                }
                // A policy axis must name a slot of this machine and one of its policies,
                // checked on the scenario as the file has it before they are applied.
                let plain = try load([])
                for (slot, policy) in overrides {
                    let slots = Policies.slots(plain.architecture)
                    guard let s = slots.first(where: { $0.name == slot }) else {
                        throw failure("axes.\(slot)", "'\(slot)' is not a policy slot of \(path)'s machine (\(plain.architecture.name)); valid axes: "
                            + Self.axisKinds.joined(separator: ", ") + "; its slots: " + slots.map(\.name).joined(separator: ", "))
                    }
                    guard s.policies.contains(where: { $0.name == policy }) else {
                        throw failure("axes.\(slot)", "'\(policy)' is not a policy of \(slot); valid: \(s.policies.map(\.name).joined(separator: ", "))")
                    }
                }
                let scenario = overrides.isEmpty ? plain : try load(overrides)
                hasher.add(text)
                for (k, v) in params { hasher.add(k + "=" + v) }
                runs.append(SweepRun(index: runs.count, file: path, params: params, scenario: scenario))
            } while Self.advance(&combination, axes.map(\.values.count))
        }
        hasher.add("\(runs.count)")
        self.runs = runs
        self.hash = hasher.hex
    }

    /// The next combination, odometer order; false after the last.
    static func advance(_ c: inout [Int], _ counts: [Int]) -> Bool {
        var i = c.count - 1
        while i >= 0 {
            c[i] += 1
            if c[i] < counts[i] { return true }
            c[i] = 0
            i -= 1
        }
        return false
    }

    /// Writes one axis value into a run's document (or its policy overrides).
    static func apply(_ axis: String, _ value: String, to doc: inout Node, overrides: inout [(String, String)],
                      matrixFile: String, node: Node, scenario: String) throws(ScenarioError) {
        func fail(_ m: String) -> ScenarioError {
            ScenarioError(file: matrixFile, line: node.mark?.line, column: node.mark?.column, field: "axes.\(axis)", m)
        }
        let scalar = Node(value)
        func setMachine(_ key: String) throws(ScenarioError) {
            var machine = doc["machine"] ?? Node([(Node, Node)]())
            guard machine.mapping != nil else { throw fail("\(scenario): machine is not a mapping") }
            machine[key] = scalar
            doc["machine"] = machine
        }
        switch axis {
        case "seed": doc["seed"] = scalar
        case "memory": try setMachine("memory")
        case "arch": try setMachine("arch")
        case "guests":
            guard let n = Int(value), n >= 0 else { throw fail("guests: '\(value)' is not a count") }
            let guests = doc["guests"]?.sequence.map(Array.init) ?? []
            guard n <= guests.count else { throw fail("guests: \(n), but \(scenario) declares \(guests.count); the axis keeps the first N") }
            let kept = Array(guests.prefix(n)), dropped = Set(guests.dropFirst(n).compactMap { $0["name"]?.string })
            doc["guests"] = Node(kept)
            // Steps that name a dropped guest go with it.
            if let steps = doc["steps"]?.sequence, !dropped.isEmpty {
                let remaining = steps.filter { step in
                    guard let m = step.mapping, let op = m.first(where: { $0.key.string != "expect" })?.value else { return true }
                    return op["guest"]?.string.map { !dropped.contains($0) } ?? true
                }
                doc["steps"] = Node(Array(remaining))
            }
        default:
            if axis.hasPrefix("machine.") && axis.count > 8 {
                try setMachine(String(axis.dropFirst(8)))
            } else if axis.hasPrefix("workload.") && axis.count > 9 {
                let key = String(axis.dropFirst(9))
                guard var steps = doc["steps"]?.sequence.map(Array.init) else { throw fail("\(scenario) has no steps") }
                var found = false
                for i in steps.indices {
                    guard var w = steps[i]["workload"], w.mapping != nil else { continue }
                    w[key] = scalar
                    steps[i]["workload"] = w
                    found = true
                }
                guard found else { throw fail("\(scenario) has no workload step for \(axis)") }
                doc["steps"] = Node(steps)
            } else if axis.contains(".") {
                overrides.append((axis, value))
            } else {
                throw fail("unknown axis '\(axis)'; valid: " + axisKinds.joined(separator: ", "))
            }
        }
    }

    /// The runs of shard `index` of `count`: every count-th run from the index-th.
    public func shard(_ index: Int, of count: Int) -> [SweepRun] {
        runs.filter { $0.index % count == index }
    }
}

/// One run of a sweep: its place, its parameters, its scenario ready to run.
public struct SweepRun: Sendable {
    public let index: Int
    public let file: String
    public let params: [(String, String)]
    public let scenario: Scenario
}

/// FNV-1a, 64-bit: a stable hash of text (Swift's own hashing is seeded per process).
struct FNV1a {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ s: String) {
        for b in s.utf8 {
            value ^= UInt64(b)
            value = value &* 0x0000_0100_0000_01b3
        }
        value ^= 0xff  // a separator, so ("ab", "c") and ("a", "bc") differ
        value = value &* 0x0000_0100_0000_01b3
    }
    var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
