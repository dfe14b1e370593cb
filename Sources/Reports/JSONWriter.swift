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
        "\"" + s.escaped { u in
            switch u {
            case "\"": "\\\""
            case "\\": "\\\\"
            case "\n": "\\n"
            case "\r": "\\r"
            case "\t": "\\t"
            case _ where u.value < 0x20: "\\u00" + (u.value < 0x10 ? "0" : "") + String(u.value, radix: 16)
            default: nil
            }
        } + "\""
    }
}

extension String {
    /// This text with each Unicode scalar `replacement` names replaced (nil keeps it): the
    /// one loop behind every output format's escaping (JSON, TAP, XML).
    func escaped(_ replacement: (Unicode.Scalar) -> String?) -> String {
        var out = ""
        for u in unicodeScalars {
            if let r = replacement(u) { out += r } else { out.unicodeScalars.append(u) }
        }
        return out
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
