// Expectations as plain calls.
//
// `#expect(...)` expands, at every call site, into closure-based code that the compiler then
// type-checks: 18 to 25 ms of compile time each, measured on HardwareTests (its 545 equalities
// took 23.6 s of CPU to compile as macros and 14.0 s as these calls; 75 booleans, 2 s more).
// These helpers expand the macro once, here. A failure still reports the caller's file and
// line, and an equality's two values; the comment is built only then. A boolean's failure
// does not show the values inside the condition, as `#expect` does: where that matters, a
// test keeps `#expect`.
import Testing

/// Records an issue at the caller's location unless `actual == expected`.
public func expectEqual<T: Equatable>(
    _ actual: T, _ expected: T, _ comment: @autoclosure () -> Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(actual == expected, comment(), sourceLocation: sourceLocation)
}

/// Records an issue at the caller's location unless `actual != other`.
public func expectNotEqual<T: Equatable>(
    _ actual: T, _ other: T, _ comment: @autoclosure () -> Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(actual != other, comment(), sourceLocation: sourceLocation)
}

/// Records an issue at the caller's location unless `condition` holds.
public func expectTrue(
    _ condition: Bool, _ comment: @autoclosure () -> Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(condition, comment(), sourceLocation: sourceLocation)
}
