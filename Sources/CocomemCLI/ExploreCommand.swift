import ArgumentParser
import Foundation
import Reports
import Simulation

/// `cocomem explore FILE`: every interleaving of a scenario's threads. docs/explorer.md.
struct ExploreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explore",
        abstract: "Run every interleaving of a scenario's threads; print the shortest one that breaks an assert, or how many states hold.",
        discussion: """
            The scenario's setup steps run first; then its 'threads:' (one list per CPU)
            are interleaved action by action, breadth first, and every state is checked
            against the invariants and the 'assert:' conditions. States already seen are
            not explored again (--no-prune explores every schedule).

            Exit status: 1 with a counterexample (printed as a listing, one column per
            CPU; --counterexample FILE writes it as a scenario that 'cocomem run'
            replays), 0 when none exists, 2 when --max-states or --max-depth stopped it.
            """)

    @Argument(help: "The scenario (YAML) with threads: and assert:.") var file: String
    @Flag(help: "Explore every schedule, also through states already seen.") var noPrune = false
    @Option(help: ArgumentHelp("Stop after this many states (exit 2).", valueName: "N")) var maxStates = 1_000_000
    @Option(help: ArgumentHelp("Stop at schedules this long (exit 2).", valueName: "N")) var maxDepth = 10_000
    @Option(help: ArgumentHelp("Write the counterexample as a scenario that 'cocomem run' replays.", valueName: "file")) var counterexample: String?
    @Option(help: ArgumentHelp("Write the counterexample as a Chrome trace, one track per CPU.", valueName: "file")) var trace: String?
    @Flag(help: "No progress line on stderr.") var quiet = false

    func validate() throws {
        if maxStates < 1 { throw ValidationError("--max-states \(maxStates): give 1 or more") }
        if maxDepth < 1 { throw ValidationError("--max-depth \(maxDepth): give 1 or more") }
    }

    func run() throws {
        let text = try ScenarioFiles.read(file)
        let s = try Scenario.load(yaml: text, file: file)
        guard !s.threads.isEmpty else { throw CLIError("\(file): no 'threads:' to interleave; give one list of steps per CPU (docs/explorer.md)") }
        var options = Explorer.Options()
        options.prune = !noPrune
        options.maxStates = maxStates
        options.maxDepth = maxDepth
        let progress = ProgressLine(quiet: quiet)
        options.progress = { states, waiting in progress.update(states, states + waiting, "states") }
        let r = try Explorer.explore(s, options: options)
        progress.finish()
        if let schedule = r.counterexample, let violation = r.violation {
            let actions = try Explorer.describe(s, schedule: schedule)
            print(Self.listing(actions, names: s.threadNames, states: r.states, violation: violation), terminator: "")
            if let path = counterexample { try ScenarioFiles.write(Self.replay(text, schedule), to: path) }
            if let path = trace { try ScenarioFiles.write(Self.chromeTrace(actions, name: s.name, threads: s.threadNames), to: path) }
            throw ExitCode(1)
        }
        if let limit = r.limited {
            print("no counterexample in \(r.states) states (\(r.schedules) complete schedules); stopped: \(limit)")
            throw ExitCode(2)
        }
        print("no counterexample: \(r.states) states, \(r.schedules) complete schedules" + (noPrune ? "" : " (states already seen not explored again)"))
    }

    /// The schedule, numbered, one column per CPU (named as the scenario names its threads).
    static func listing(_ actions: [(cpu: Int, action: String)], names: [String], states: Int, violation: String) -> String {
        let cpus = names.count
        let width = max(24, actions.map(\.action.count).max() ?? 0)
        var out = "counterexample: \(actions.count) actions, found after \(states) states\n\n"
        func trimmed(_ s: String) -> String { String(s.reversed().drop { $0 == " " }.reversed()) }
        out += trimmed("   #  " + names.map { $0.padding(toLength: width, withPad: " ", startingAt: 0) }.joined(separator: "  ")) + "\n"
        for (i, a) in actions.enumerated() {
            let n = String(i + 1)
            let cells = (0..<cpus).map { $0 == a.cpu ? a.action.padding(toLength: width, withPad: " ", startingAt: 0) : String(repeating: " ", count: width) }
            out += trimmed(String(repeating: " ", count: max(0, 4 - n.count)) + n + "  " + cells.joined(separator: "  ")) + "\n"
        }
        return out + "\nthen: \(violation)\n"
    }

    /// The scenario again, with the counterexample's schedule (any earlier one replaced).
    static func replay(_ text: String, _ schedule: [Int]) -> String {
        let kept = text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("schedule:") }.joined(separator: "\n")
        return kept + (kept.hasSuffix("\n") ? "" : "\n") + "# The counterexample 'cocomem explore' found: 'cocomem run' replays it.\n"
            + "schedule: [" + schedule.map(String.init).joined(separator: ", ") + "]\n"
    }

    /// One track per CPU, an action per microsecond.
    static func chromeTrace(_ actions: [(cpu: Int, action: String)], name: String, threads: [String]) -> String {
        var events: [JSON] = [.object([("name", .string("process_name")), ("ph", .string("M")), ("pid", .int(1)),
                                       ("args", .object([("name", .string("cocomem explore: \(name)"))]))])]
        for cpu in Set(actions.map(\.cpu)).sorted() {
            events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(1)), ("tid", .int(cpu + 1)),
                                   ("args", .object([("name", .string(threads[cpu]))]))]))
        }
        for (i, a) in actions.enumerated() {
            events.append(.object([("name", .string(a.action)), ("ph", .string("X")), ("ts", .int(i)), ("dur", .int(1)),
                                   ("pid", .int(1)), ("tid", .int(a.cpu + 1)), ("args", .object([("action", .int(i + 1))]))]))
        }
        return JSON.object([("traceEvents", .array(events)), ("displayTimeUnit", .string("ns"))]).render(indent: nil) + "\n"
    }
}
