/// A mistake in a scenario: where it is (file, line, column, field) and what would be valid.
public struct ScenarioError: Error, Hashable, Sendable, CustomStringConvertible {
    public let file: String
    /// 1-based line and column, when the place is known.
    public let line: Int?
    public let column: Int?
    /// The field's path, e.g. `steps[3].set_memory_decrypted.addr`.
    public let field: String
    public let message: String

    public init(file: String, line: Int?, column: Int?, field: String, _ message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.message = message
    }

    public var description: String {
        var place = file
        if let line { place += ":\(line)" }
        if let column { place += ":\(column)" }
        return field.isEmpty ? "\(place): \(message)" : "\(place): \(field): \(message)"
    }
}

/// A run that stopped because an invariant broke: the step, the invariant, the state.
public struct InvariantFailure: Error, Hashable, Sendable, CustomStringConvertible {
    /// 1-based step number (0 = right after boot).
    public let step: Int
    public let invariant: String
    public let detail: String

    public var description: String {
        "invariant '\(invariant)' violated after step \(step): \(detail)"
    }
}
