import ArgumentParser
import HostKernel
import Simulation

/// `cocomem list steps|policies|workloads|checks|invariants|archs`.
struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List what exists: steps, policies, workloads, checks, invariants or archs, one a line.")

    enum What: String, ExpressibleByArgument, CaseIterable {
        case steps, policies, workloads, checks, invariants, archs
    }

    @Argument(help: ArgumentHelp("One of: \(What.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "what"))
    var what: What

    func run() { print(Self.text(what), terminator: "") }

    static func text(_ what: What) -> String {
        var rows: [(String, String)] = []
        switch what {
        case .steps:
            rows = Steps.all.map { ($0.name, $0.summary) } + [("workload", "run a named generator: " + Workloads.all.map(\.name).joined(separator: ", "))]
        case .policies:
            for slot in Policies.slots {
                rows.append((slot.name, slot.summary + " (default \(slot.defaultPolicy))"))
                rows += slot.policies.map { ("  " + $0.name, $0.summary) }
            }
        case .workloads: rows = Workloads.all.map { ($0.name, $0.summary) }
        case .checks: rows = Checks.all.map { ($0.name, $0.summary) }
        case .invariants: rows = Invariants.all.map { ($0.name, "[\($0.layer)] \($0.summary)") }
        case .archs: rows = Architecture.allCases.map { ($0.rawValue, $0.summary) }
        }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0 + String(repeating: " ", count: width - $0.0.count + 2) + $0.1 + "\n" }.joined()
    }
}
