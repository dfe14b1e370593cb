// Equality expectations as plain calls.
//
// `#expect(a == b)` expands, at every call site, into a closure-based check that the compiler
// then type-checks: about 18 ms of compile time each, measured on HardwareTests (545 of them:
// 23.6 s of CPU before, 14.0 s after). These helpers expand the macro once, here; a failure
// still reports both values and the caller's file and line, and the comment is built only then.
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
