/// Parses the numbers users write: decimal, `0x` hex, and sizes with a K/M/G/T/P suffix
/// (binary units, as the kernel's memparse reads them), joined by `+` or `-`, e.g. `3G-1M`.
/// Linux lib/cmdline.c memparse, extended with sums and differences.
public enum ByteSize {
    /// The value of `text`, or nil if it is not a number or overflows 64 bits.
    public static func parse(_ text: String) -> UInt64? {
        let s = text.trimmingCharacters(in: " \t")
        guard !s.isEmpty else { return nil }
        var total: UInt64 = 0
        var sign: UInt64? = 1  // 1 adds the next term, 0 subtracts it
        var term = ""
        func flush() -> Bool {
            guard let op = sign, let v = Self.term(term) else { return false }
            if op == 1 {
                let (r, o) = total.addingReportingOverflow(v)
                if o { return false }
                total = r
            } else {
                guard v <= total else { return false }
                total -= v
            }
            return true
        }
        for (i, c) in s.enumerated() {
            if (c == "+" || c == "-") && i > 0 {
                guard flush() else { return nil }
                sign = c == "+" ? 1 : 0
                term = ""
            } else if c != " " {
                term.append(c)
            }
        }
        return flush() ? total : nil
    }

    /// One term: a number with an optional unit suffix.
    static func term(_ t: String) -> UInt64? {
        guard !t.isEmpty else { return nil }
        let units: [Character: UInt64] = ["K": 10, "k": 10, "M": 20, "m": 20, "G": 30, "g": 30, "T": 40, "t": 40, "P": 50, "p": 50]
        let isHex = t.hasPrefix("0x") || t.hasPrefix("0X")
        var digits = Substring(t)
        var shift: UInt64 = 0
        if !isHex, let last = digits.last, let u = units[last] {
            shift = u
            digits = digits.dropLast()
        }
        let value: UInt64?
        if isHex {
            value = UInt64(digits.dropFirst(2).replacingUnderscores(), radix: 16)
        } else {
            value = UInt64(digits.replacingUnderscores(), radix: 10)
        }
        guard let v = value else { return nil }
        let (r, o) = v.multipliedReportingOverflow(by: 1 << shift)
        return o ? nil : r
    }

    /// `n` with the largest binary unit that divides it exactly: `4K`, `2M`, `64G`, or bytes.
    public static func format(_ n: UInt64) -> String {
        for (shift, unit) in [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")] where n != 0 && n & ((1 << shift) - 1) == 0 {
            return "\(n >> UInt64(shift))\(unit)"
        }
        return "\(n)"
    }
}

extension Substring {
    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}

extension StringProtocol {
    /// This text without leading and trailing characters from `set` (no Foundation needed).
    public func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
