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
            list policies' lists them.
            """)

    @Argument(help: "The scenario (YAML).") var file: String
    @Option(help: ArgumentHelp("A policy to run (repeatable).", valueName: "name")) var policy: [String] = []
    @Option(help: ArgumentHelp("The policy slot, e.g. host.cpa-collapse.", valueName: "slot")) var slot: String?
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Flag(help: "Print CSV instead of a table.") var csv = false
    @Option(help: ArgumentHelp("Write one SVG map per policy into this directory (POLICY.svg), all at the same scale.", valueName: "dir")) var svg: String?
    @Option(help: ArgumentHelp("Colour the maps by leaf-size or ownership.", valueName: "mode")) var color: String = "leaf-size"

    func validate() throws {
        if policy.isEmpty { throw ValidationError("give at least one --policy") }
        if json && csv { throw ValidationError("give --json or --csv, not both") }
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
        if let dir = svg {
            // One machine size for every run, so every map has the same cell and row size.
            let coloring = MemoryMap.Coloring(rawValue: color) ?? .leafSize
            for (p, r) in zip(policy, results) {
                let name = String(p.map { $0 == "/" || $0 == "\0" ? "_" : $0 })
                try ScenarioFiles.write(Run.map(r.machine, coloring: coloring, title: "\(r.scenario.name), \(slot.name) = \(p)"),
                                        to: dir + "/" + name + ".svg")
            }
        }
        print(Self.render(results, policies: policy, slot: slot.name, json: json, csv: csv), terminator: "")
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

    static func render(_ results: [RunResult], policies: [String], slot: String, json: Bool, csv: Bool) -> String {
        let names = results[0].metrics.map(\.0)
        if json {
            return JSON.object([
                ("scenario", .string(results[0].scenario.name)), ("slot", .string(slot)),
                ("runs", .array(zip(policies, results).map { p, r in
                    .object([("policy", .string(p)), ("passed", .bool(r.passed)), ("metrics", .object(r.metrics.map { ($0.0, .number($0.1)) }))])
                })),
            ]).render() + "\n"
        }
        if csv {
            return "metric," + policies.joined(separator: ",") + "\n"
                + names.indices.map { i in names[i] + "," + results.map { String($0.metrics[i].1) }.joined(separator: ",") + "\n" }.joined()
        }
        var rows = names.indices.map { i in [names[i]] + results.map { String($0.metrics[i].1) } }
        rows.append(["expectations+checks"] + results.map { $0.passed ? "pass" : "FAIL" })
        return "scenario \(results[0].scenario.name), slot \(slot)\n\n"
            + RunReport.table(["metric"] + policies, rows, rightAlign: Set(1...policies.count))
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
