import Testing
@testable import Hardware
import Expectations

/// The digests the explorer's state keys are made of: kept only once tracked, equal for
/// equal contents whatever the order of changes that led there, and equal to the digest
/// computed afresh from the contents.
struct DigestedTests {
    @Test func setsDictionariesAndArraysDigestTheirContentsWhateverTheOrder() {
        var a = DigestedSet<UInt64>(), b = DigestedSet<UInt64>()
        a.track()
        b.track()
        for x in [3, 1, 2] as [UInt64] { a.insert(x) }
        for x in [2, 9, 3, 1] as [UInt64] { b.insert(x) }
        b.remove(9)
        expectEqual(a, b)
        expectEqual(a.digest, b.digest)
        expectNotEqual(a.digest, 0)
        b.remove(1)
        expectNotEqual(a.digest, b.digest)

        var d = DigestedDictionary<UInt64, UInt64>(), e = DigestedDictionary<UInt64, UInt64>()
        d.track()
        e.track()
        d[1] = 10
        d[2] = 20
        e[2] = 21
        e[1] = 10
        e[2] = 20
        expectEqual(d.digest, e.digest)
        e[2] = nil
        expectNotEqual(d.digest, e.digest)
        var fresh = DigestedDictionary<UInt64, UInt64>()
        fresh[1] = 10
        expectEqual(fresh.digest, 0)  // not tracked: nothing kept
        fresh.track()
        expectEqual(fresh.digest, e.digest)

        var p = DigestedArray<Int>(repeating: 0, count: 4), q = DigestedArray<Int>(repeating: 0, count: 4)
        p.track()
        q.track()
        expectEqual(p.digest, 0)  // blanks cost nothing
        p[1] = 5
        q[2] = 5
        expectNotEqual(p.digest, q.digest)  // the position counts
        q[2] = 0
        q[1] = 5
        expectEqual(p.digest, q.digest)
        p.append(7)
        q.append(8)
        expectNotEqual(p.digest, q.digest)
        _ = q.popLast()
        q.append(7)
        expectEqual(p.digest, q.digest)
        var late = DigestedArray<Int>(repeating: 0, count: 4)
        late[1] = 5
        late.append(7)
        late.track()
        expectEqual(late.digest, p.digest)
    }
}
