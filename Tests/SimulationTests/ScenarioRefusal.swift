import Testing
@testable import Simulation

/// Expects the scenario reader to refuse `text` with an error containing `message` (the
/// scenario-error tests of each architecture).
func refused(_ text: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(sourceLocation: sourceLocation, performing: { _ = try Scenario.load(yaml: text, file: "t.yaml") },
            throws: { "\($0)".contains(message) })
}
