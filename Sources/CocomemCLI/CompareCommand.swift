import ArgumentParser
import Dispatch
import PageTables
import Reports
import Simulation

/// `cocomem compare FILE --policy A --policy B`: one run per policy, side by side.
struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one scenario once per policy and print the metrics side by side.",
        discussion: """
            Each --policy replaces the scenario's choice in one slot (given by --slot,
            or the only slot that has all the named policies). Runs are spread over
            the cores; the output is in the order the policies were given. 'cocomem
            list policies' lists them. The table leaves out metrics that are zero in
            every run (--show-zero keeps them); its last row names what failed in each
            run. Exit status 1 when any run fails an expectation, a check or an
            invariant (--allow-fail: 0).
            """)

    @Argument(help: "The scenario (YAML).") var file: String
    @Option(help: ArgumentHelp("A policy to run (repeatable).", valueName: "name")) var policy: [String] = []
    @Option(help: ArgumentHelp("The policy slot, e.g. host.cpa-collapse.", valueName: "slot")) var slot: String?
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Flag(help: "Print CSV instead of a table.") var csv = false
    @Flag(help: "Print the table as Markdown.") var markdown = false
    @Option(help: ArgumentHelp("Only these metrics, in this order (comma-separated).", valueName: "a,b,c")) var metrics: String?
    @Flag(help: "Leave out metrics that are zero in every run (the default).") var hideZero = false
    @Flag(help: "Keep metrics that are zero in every run.") var showZero = false
    @Flag(help: "Exit 0 even when a run fails.") var allowFail = false
    @Option(help: ArgumentHelp("Write one SVG map per policy into this directory (POLICY.svg), all at the same scale.", valueName: "dir")) var svg: String?
    @Option(help: ArgumentHelp("Colour the maps by leaf-size or ownership.", valueName: "mode")) var color: String = "leaf-size"

    func validate() throws {
        if policy.isEmpty { throw ValidationError("give at least one --policy") }
        if [json, csv, markdown].filter({ $0 }).count > 1 { throw ValidationError("give one of --json, --csv and --markdown") }
        if hideZero && showZero { throw ValidationError("give --hide-zero or --show-zero, not both") }
        if MemoryMap.Coloring(rawValue: color) == nil {
            throw ValidationError("--color '\(color)': valid: \(MemoryMap.Coloring.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let text = try ScenarioFiles.read(file)
        let base = try Scenario.load(yaml: text, file: file)
        let slot = try Self.resolveSlot(slot, policies: policy, among: Policies.slots(base.architecture))
        var scenarios: [Scenario] = []
        for p in policy { scenarios.append(try Scenario.load(yaml: text, file: file, policyOverrides: [(slot.name, p)])) }
        if svg != nil, base.memory.endOfRAM > MemoryMap.maxRAM {
            throw CLIError("--svg: RAM up to \(ByteSize.format(base.memory.endOfRAM)); maps draw up to \(ByteSize.format(MemoryMap.maxRAM)) of RAM")
        }
        if let dir = svg { try ScenarioFiles.makeDirectory(dir, what: "--svg") }
        let results = try Self.runAll(scenarios)
        var names = results[0].metrics.map(\.0)
        if let list = metrics {
            let wanted = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if let bad = wanted.first(where: { !names.contains($0) }) {
                throw CLIError("--metrics: no metric '\(bad)' on this machine" + Suggest.hint(bad, in: names, listedBy: "'cocomem run FILE'"))
            }
            names = wanted
        } else if !showZero && !json && !csv {
            names = names.filter { n in results.contains { r in r.metrics.first { $0.0 == n }!.1 != 0 } }
        }
        if let dir = svg {
            // One machine size for every run, so every map has the same cell and row size.
            let coloring = MemoryMap.Coloring(rawValue: color) ?? .leafSize
            for (p, r) in zip(policy, results) {
                let name = String(p.map { $0 == "/" || $0 == "\0" ? "_" : $0 })
                try ScenarioFiles.write(Run.map(r.machine, coloring: coloring, title: "\(r.scenario.name), \(slot.name) = \(p)"),
                                        to: dir + "/" + name + ".svg")
            }
        }
        print(Self.render(results, policies: policy, slot: slot.name, metrics: names,
                           format: json ? .json : csv ? .csv : markdown ? .markdown : .table, hideZeros: metrics == nil && !showZero),
              terminator: "")
        if !allowFail && !results.allSatisfy(\.passed) { throw ExitCode(1) }
    }

    /// The slot the policies belong to among the scenario machine's `slots`: the one named,
    /// or the only one holding them all.
    static func resolveSlot(_ name: String?, policies: [String], among slots: [PolicySlot]) throws -> PolicySlot {
        let slot: PolicySlot
        if let name {
            guard let s = slots.first(where: { $0.name == name }) else {
                throw CLIError("--slot '\(name)': not a slot of this scenario's machine; valid: \(slots.map(\.name).joined(separator: ", "))")
            }
            slot = s
        } else {
            let fits = slots.filter { s in policies.allSatisfy { p in s.policies.contains { $0.name == p } } }
            var known: [String] = []
            for name in slots.flatMap({ $0.policies.map(\.name) }) where !known.contains(name) { known.append(name) }  // this machine's slots
            if let unknown = policies.first(where: { !known.contains($0) }) {
                throw CLIError("--policy '\(unknown)': no such policy" + Suggest.hint(unknown, in: known, listedBy: "'cocomem list policies'"))
            }
            guard fits.count == 1 else {
                throw CLIError(fits.isEmpty
                    ? "no policy slot has all of \(policies.joined(separator: ", ")); 'cocomem list policies' shows them"
                    : "several slots fit (\(fits.map(\.name).joined(separator: ", "))); choose one with --slot")
            }
            slot = fits[0]
        }
        for p in policies where !slot.policies.contains(where: { $0.name == p }) {
            throw CLIError("--policy '\(p)' is not a policy of \(slot.name); valid: \(slot.policies.map(\.name).joined(separator: ", "))")
        }
        return slot
    }

    /// Runs the scenarios concurrently; results come back in input order.
    static func runAll(_ scenarios: [Scenario]) throws -> [RunResult] {
        let box = ResultsBox(count: scenarios.count)
        DispatchQueue.concurrentPerform(iterations: scenarios.count) { i in
            box.set(i, Result { try Runner.run(scenarios[i]) })
        }
        return try box.values.map { try $0!.get() }
    }

    enum Format { case table, markdown, json, csv }

    /// What failed in a run, by name: the invariant, the steps whose expectation failed, the
    /// checks that failed.
    static func failures(_ r: RunResult) -> [String] {
        var out: [String] = []
        if let f = r.failure { out.append("invariant \(f.invariant) at step \(f.step)") }
        out += r.failedExpectations.map { "step \($0.index) \($0.name): expected \($0.expect!), got \($0.result)" }
        out += r.checks.filter { !$0.passed }.map(\.description)
        return out
    }

    /// A CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
    static func csvField(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
    }

    /// `hideZeros`: `metrics` left out the rows that are zero in every run (say how many).
    static func render(_ results: [RunResult], policies: [String], slot: String, metrics names: [String], format: Format,
                       hideZeros: Bool = false) -> String {
        func value(_ r: RunResult, _ name: String) -> UInt64 { r.metrics.first { $0.0 == name }!.1 }
        let first = results[0]
        switch format {
        case .json:
            return JSON.object([
                ("scenario", .string(first.scenario.name)), ("file", .string(first.scenario.file)), ("seed", .number(first.scenario.seed)),
                ("slot", .string(slot)),
                ("runs", .array(zip(policies, results).map { p, r in
                    .object([
                        ("policy", .string(p)),
                        ("policies", .object(r.scenario.policies.map { ($0.slot, .string($0.policy)) })),
                        ("passed", .bool(r.passed)), ("failed", .array(failures(r).map { .string($0) })),
                        ("checks", .array(r.checks.map { .object([("check", .string($0.description)), ("passed", .bool($0.passed)), ("detail", .string($0.detail))]) })),
                        ("metrics", .object(names.map { ($0, .number(value(r, $0))) })),
                    ])
                })),
            ]).render() + "\n"
        case .csv:
            var out = "metric," + policies.joined(separator: ",") + "\n"
            out += "seed," + results.map { String($0.scenario.seed) }.joined(separator: ",") + "\n"
            for (i, s) in first.scenario.policies.enumerated() {
                out += "policy:\(s.slot)," + results.map { $0.scenario.policies[i].policy }.joined(separator: ",") + "\n"
            }
            out += names.map { n in n + "," + results.map { String(value($0, n)) }.joined(separator: ",") + "\n" }.joined()
            for (i, c) in first.checks.enumerated() {
                out += csvField("check:\(c.description)") + "," + results.map { $0.checks[i].passed ? "pass" : "fail" }.joined(separator: ",") + "\n"
            }
            return out + "passed," + results.map { $0.passed ? "true" : "false" }.joined(separator: ",") + "\n"
        case .table, .markdown:
            var rows = names.map { n in [n] + results.map { String(value($0, n)) } }
            // The last row names each run's first failure (a check by name); all follow the table.
            rows.append(["expectations+checks"] + results.map { r in
                guard !r.passed else { return "pass" }
                let first = r.failure.map { _ in "invariant" } ?? r.checks.first { !$0.passed }?.name ?? "step \(r.failedExpectations[0].index)"
                let more = failures(r).count - 1
                return "FAIL: \(first)" + (more > 0 ? " +\(more)" : "")
            })
            let hidden = hideZeros ? first.metrics.count - names.count : 0
            var note = hidden > 0 ? "\n\(hidden) metrics zero in every run not shown (--show-zero shows them)\n" : ""
            let failed = zip(policies, results).filter { !$0.1.passed }
            if !failed.isEmpty {
                note += "\nfailed:\n" + failed.map { p, r in "  \(p): " + failures(r).joined(separator: "; ") + "\n" }.joined()
            }
            if format == .markdown {
                let header = "| metric | " + policies.joined(separator: " | ") + " |\n|---|" + String(repeating: "---:|", count: policies.count) + "\n"
                return "scenario `\(first.scenario.name)`, slot `\(slot)`, seed \(first.scenario.seed)\n\n" + header
                    + rows.map { "| " + $0.joined(separator: " | ") + " |\n" }.joined() + note
            }
            return "scenario \(first.scenario.name), slot \(slot), seed \(first.scenario.seed)\n\n"
                + RunReport.table(["metric"] + policies, rows, rightAlign: Set(1...policies.count)) + note
        }
    }
}

/// Slots for results written from concurrent runs.
final class ResultsBox: @unchecked Sendable {
    private var storage: [Result<RunResult, any Error>?]
    private let lock = NSLockLike()
    init(count: Int) { storage = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<RunResult, any Error>) { lock.withLock { storage[i] = r } }
    var values: [Result<RunResult, any Error>?] { lock.withLock { storage } }
}

/// A mutex from Dispatch, so the CLI needs no Foundation lock types.
final class NSLockLike: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 1)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        semaphore.wait()
        defer { semaphore.signal() }
        return try body()
    }
}
