/// "Did you mean": the valid names closest to a mistyped one, for errors about unknown
/// steps, fields, policies, workloads, checks, metrics and architectures.
public enum Suggest {
    /// Up to three valid names within a small edit distance of `name` (or that contain it,
    /// or that it contains), closest first, ties in the order given.
    public static func closest(_ name: String, in valid: [String]) -> [String] {
        let n = Array(name.lowercased().utf8)
        let limit = n.count <= 3 ? 1 : max(2, n.count / 3)
        var scored: [(Int, Int, String)] = []
        for (i, v) in valid.enumerated() {
            let c = Array(v.lowercased().utf8)
            var d = distance(n, c)
            if d > limit, min(n.count, c.count) >= 3, v.lowercased().contains(name.lowercased()) || name.lowercased().contains(v.lowercased()) { d = limit }
            if d <= limit { scored.append((d, i, v)) }
        }
        return scored.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.prefix(3).map(\.2)
    }

    /// The message tail: "; did you mean 'a' or 'b'?" for names close to `name`; then the
    /// valid names when there are few of them (ten at most) ("valid: …"), or, for a long list with nothing
    /// close, a pointer to where they are listed.
    public static func hint(_ name: String, in valid: [String], listedBy: String) -> String {
        let close = closest(name, in: valid)
        var out = close.isEmpty ? "" : "; did you mean " + close.map { "'\($0)'" }.joined(separator: " or ") + "?"
        if valid.isEmpty { return out + "; there are none here" }
        if valid.count <= 10 { out += "; valid: " + valid.joined(separator: ", ") } else if close.isEmpty { out += "; \(listedBy) lists them" }
        return out
    }

    /// Levenshtein distance with adjacent transpositions counted as one edit.
    static func distance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev2 = [Int](repeating: 0, count: b.count + 1)
        var prev = Array(0...b.count)
        var cur = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            cur[0] = i
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] { cur[j] = min(cur[j], prev2[j - 2] + 1) }
            }
            (prev2, prev, cur) = (prev, cur, prev2)
        }
        return prev[b.count]
    }
}
