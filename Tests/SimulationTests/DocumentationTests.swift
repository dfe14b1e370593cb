import Foundation
import Testing
@testable import Simulation

/// docs/SCENARIOS.md documents everything that is registered.
@Suite struct DocumentationTests {
    static func scenariosDoc() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("docs/SCENARIOS.md"), encoding: .utf8)
    }

    @Test func everyStepWorkloadCheckPolicyArchAndInvariantIsDocumented() throws {
        let doc = try Self.scenariosDoc()
        var names = Steps.all.map(\.name) + ["workload"] + Workloads.all.map(\.name) + Checks.all.map(\.name)
        names += Invariants.all.map(\.name) + Architectures.all.map(\.name)
        for slot in Policies.all { names += [slot.name, slot.key] + slot.policies.map(\.name) }
        names += Architectures.all.flatMap { Machine.metricInfo($0).map(\.name) } + ScenarioReader.machineKeys + ScenarioReader.topKeys
        for s in Steps.all { names += s.aliases.map(\.name) }
        let missing = names.filter { !doc.contains("`\($0)`") }
        #expect(missing.isEmpty, "docs/SCENARIOS.md does not mention: \(missing.joined(separator: ", "))")
    }
}
