/// A small JSON writer with keys in the order given, so output is byte-identical run to run
/// (Foundation's encoder does not promise key order).
public indirect enum JSON: Sendable {
    case string(String)
    case number(UInt64)
    case int(Int)
    /// A number printed with three decimals (figures, ratios).
    case double(Double)
    case bool(Bool)
    case null
    case array([JSON])
    case object([(String, JSON)])

    /// Compact when `indent` is nil, else pretty with that many spaces per level.
    public func render(indent: Int? = 2) -> String {
        var out = ""
        write(&out, level: 0, indent: indent)
        return out
    }

    func write(_ out: inout String, level: Int, indent: Int?) {
        let nl = indent == nil ? "" : "\n"
        func pad(_ l: Int) -> String { indent.map { String(repeating: " ", count: $0 * l) } ?? "" }
        switch self {
        case .string(let s): out += JSON.quote(s)
        case .number(let n): out += String(n)
        case .int(let n): out += String(n)
        case .double(let d): out += d.isFinite ? String(format3(d)) : "null"
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "[" + nl
            for (i, item) in items.enumerated() {
                out += pad(level + 1)
                item.write(&out, level: level + 1, indent: indent)
                out += (i + 1 < items.count ? "," : "") + nl
            }
            out += pad(level) + "]"
        case .object(let pairs):
            if pairs.isEmpty { out += "{}"; return }
            out += "{" + nl
            for (i, (k, v)) in pairs.enumerated() {
                out += pad(level + 1) + JSON.quote(k) + (indent == nil ? ":" : ": ")
                v.write(&out, level: level + 1, indent: indent)
                out += (i + 1 < pairs.count ? "," : "") + nl
            }
            out += pad(level) + "}"
        }
    }

    /// A JSON string literal (RFC 8259 escapes).
    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

/// `d` with three decimals, without Foundation.
func format3(_ d: Double) -> String {
    let scaled = (d * 1000).rounded()
    let negative = scaled < 0
    let v = UInt64(abs(scaled))
    let frac = String(v % 1000)
    return (negative ? "-" : "") + String(v / 1000) + "." + String(repeating: "0", count: 3 - frac.count) + frac
}
