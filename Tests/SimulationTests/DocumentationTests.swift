import Foundation
import HostKernel
import Testing
@testable import Simulation
import Expectations

/// docs/SCENARIOS.md documents everything that is registered.
struct DocumentationTests {
    static func scenariosDoc() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("docs/SCENARIOS.md"), encoding: .utf8)
    }

    @Test func everyStepWorkloadCheckPolicyArchAndInvariantIsDocumented() throws {
        let doc = try Self.scenariosDoc()
        var names = Steps.all.map(\.name) + ["workload"] + Workloads.all.map(\.name) + Checks.all.map(\.name)
        names += Invariants.all.map(\.name) + Architectures.all.map(\.name)
        // Policies an embedding program registered (EmbeddingTests does, maybe meanwhile) are
        // its to document: read each slot's list first, then what is registered.
        for slot in Policies.all {
            let listed = slot.policies.map(\.name), embedders = DirectMapPolicyKind.registered.map(\.rawValue)
            names += [slot.name, slot.key] + listed.filter { !embedders.contains($0) }
        }
        names += Architectures.all.flatMap { Machine.metricInfo($0).map(\.name) } + ScenarioReader.machineKeys + ScenarioReader.topKeys
        for s in Steps.all { names += s.aliases.map(\.name) }
        let missing = names.filter { !doc.contains("`\($0)`") }
        expectTrue(missing.isEmpty, "docs/SCENARIOS.md does not mention: \(missing.joined(separator: ", "))")
    }
}
