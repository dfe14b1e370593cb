import ArgumentParser
import Hardware
import HostKernel
import Simulation

/// `cocomem list steps|routines|policies|workloads|checks|invariants|metrics|archs|operations`.
struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List what exists: steps (with their arguments), routines (the steps an explorer thread runs action by action), policies, workloads, checks, invariants, metrics, archs, or the operations --apply accepts.",
        discussion: "Steps and workloads list their arguments under them, with their defaults; metrics give their unit and meaning, grouped by the layer or architecture that reports them.")

    enum What: String, ExpressibleByArgument, CaseIterable {
        case steps, routines, policies, workloads, checks, invariants, metrics, archs, operations
    }

    @Argument(help: ArgumentHelp("One of: \(What.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "what"))
    var what: What

    func run() { print(Self.text(what), terminator: "") }

    static func text(_ what: What) -> String {
        var rows: [(String, String)] = []
        switch what {
        case .steps:
            for s in Steps.all {
                let owners = Architectures.all.filter { a in a.steps.contains { $0.same(as: s) } }.map(\.name)
                rows.append((s.name, s.summary + (owners.isEmpty ? "" : " [\(owners.joined(separator: ", "))]") + (s.aliases.isEmpty ? "" : " (also: \(s.aliases.map(\.name).joined(separator: ", ")))")))
                rows += s.arguments.map { ("  " + $0.name, $0.helpLine) }
            }
            rows.append(("workload", "run a named generator: " + Workloads.all.map(\.name).joined(separator: ", ")))
        case .routines:
            for (r, archs) in ThreadRoutineDefinition.catalogue {
                rows.append((r.name, r.summary + " [\(archs.joined(separator: ", "))]"))
                rows += r.arguments.map { ("  " + $0.name, $0.helpLine) }
            }
        case .policies:
            for slot in Policies.all {
                rows.append((slot.name, slot.summary + " (default \(slot.defaultPolicy))"))
                rows += slot.policies.map { ("  " + $0.name, $0.summary) }
            }
        case .workloads:
            for w in Workloads.all {
                rows.append((w.name, w.summary))
                rows += w.parameters.map { ("  " + $0.name, $0.helpLine) }
            }
        case .metrics:
            let groups: [(String, [MetricInfo])] = [("x86 host kernel (x86-64, x86-snp)", Kernel.metrics(.x86_64).map(\.info)),
                                                    ("arm64 host kernel", Kernel.metrics(.arm64).map(\.info))]
                + Architectures.modelled.filter { !$0.metrics.isEmpty }.map { ($0.name, $0.metrics) }
                + [("every run", Machine.runMetrics)]
            for (group, metrics) in groups {
                rows.append(("[\(group)]", ""))
                rows += metrics.map { ("  " + $0.name, "\($0.summary) (\($0.unit))") }
            }
        case .checks: rows = Checks.all.map { ($0.name, $0.summary) }
        case .invariants: rows = Invariants.all.map { ($0.name, "[\($0.layer)] \($0.summary)") }
        case .archs: rows = Architectures.all.map { ($0.name, $0.summary) }
        case .operations: rows = KernelOperation.catalogue.map { ("\($0.name) \($0.arguments)", $0.summary) }
        }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0 + String(repeating: " ", count: width - $0.0.count + 2) + $0.1 + "\n" }.joined()
    }
}
