import Expectations
import Testing

/// The test helpers fail where `#expect` would: at the caller's line, with its comment.
struct ExpectationsTests {
    @Test func aFailedEqualityIsAnIssueAtTheCallersLine() {
        let line = #line + 2
        withKnownIssue {
            expectEqual(1 + 1, 3, "two is not three")
        } matching: { issue in
            issue.sourceLocation?.fileID == #fileID && issue.sourceLocation?.line == line
                && issue.comments.map(\.rawValue) == ["two is not three"]
        }
        withKnownIssue {
            expectNotEqual([1, 2], [1, 2])
        } matching: { issue in
            issue.sourceLocation?.line == line + 6
        }
        withKnownIssue {
            expectTrue([1, 2].contains(3), "no 3")
        } matching: { issue in
            issue.sourceLocation?.line == line + 11 && issue.comments.map(\.rawValue) == ["no 3"]
        }
    }

    /// A comment is built only when the expectation fails.
    @Test func aPassingExpectationDoesNotBuildItsComment() {
        var built = 0
        func comment() -> Comment { built += 1; return "built" }
        expectEqual(2, 2, comment())
        expectNotEqual(2, 3, comment())
        expectTrue(true, comment())
        expectEqual(built, 0)
    }
}
