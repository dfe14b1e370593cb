/// Reads JSON back into `JSON`, keys in document order (what `merge` needs to print sweep
/// lines exactly as they were written). Integers become `.int` or `.number`; a number with a
/// fraction or exponent becomes `.double`. Nesting is limited so hostile input cannot
/// exhaust the stack.
public struct JSONReader {
    public struct Failure: Error, CustomStringConvertible {
        public let offset: Int
        public let message: String
        public var description: String { "at byte \(offset): \(message)" }
    }

    let bytes: [UInt8]
    var i = 0
    static let maxDepth = 64

    public static func parse(_ text: String) throws(Failure) -> JSON {
        var r = JSONReader(bytes: Array(text.utf8))
        let v = try r.value(depth: 0)
        r.space()
        guard r.i == r.bytes.count else { throw r.fail("text after the value") }
        return v
    }

    func fail(_ m: String) -> Failure { Failure(offset: i, message: m) }

    mutating func space() { while i < bytes.count, [0x20, 0x0a, 0x0d, 0x09].contains(bytes[i]) { i += 1 } }

    mutating func expect(_ literal: String) throws(Failure) {
        for b in literal.utf8 {
            guard i < bytes.count, bytes[i] == b else { throw fail("expected '\(literal)'") }
            i += 1
        }
    }

    mutating func value(depth: Int) throws(Failure) -> JSON {
        guard depth < Self.maxDepth else { throw fail("nested deeper than \(Self.maxDepth)") }
        space()
        guard i < bytes.count else { throw fail("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var pairs: [(String, JSON)] = []
            space()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
            while true {
                space()
                let k = try string()
                space()
                try expect(":")
                pairs.append((k, try value(depth: depth + 1)))
                space()
                guard i < bytes.count else { throw fail("unexpected end in an object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                try expect("}")
                return .object(pairs)
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSON] = []
            space()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                items.append(try value(depth: depth + 1))
                space()
                guard i < bytes.count else { throw fail("unexpected end in an array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                try expect("]")
                return .array(items)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        default: return try number()
        }
    }

    mutating func number() throws(Failure) -> JSON {
        let start = i
        while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) { i += 1 }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if let n = Int(text) { return .int(n) }
        if let n = UInt64(text) { return .number(n) }
        if let d = Double(text) { return .double(d) }
        i = start
        throw fail("not a JSON value")
    }

    mutating func string() throws(Failure) -> String {
        try expect("\"")
        var out: [UInt8] = []
        while i < bytes.count {
            let b = bytes[i]
            i += 1
            if b == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            guard b == UInt8(ascii: "\\") else { out.append(b); continue }
            guard i < bytes.count else { break }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0a)
            case UInt8(ascii: "r"): out.append(0x0d)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0c)
            case UInt8(ascii: "u"):
                guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else { throw fail("bad \\u escape") }
                i += 4
                out += Array(String(Unicode.Scalar(v).map(Character.init) ?? "\u{fffd}").utf8)
            default: out.append(e)
            }
        }
        throw fail("unterminated string")
    }
}

extension JSON {
    /// The value at `key` of an object.
    public subscript(key: String) -> JSON? {
        if case .object(let pairs) = self { return pairs.first { $0.0 == key }?.1 }
        return nil
    }
    public var intValue: Int? {
        switch self {
        case .int(let n): n
        case .number(let n): n <= UInt64(Int.max) ? Int(n) : nil
        default: nil
        }
    }
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var pairs: [(String, JSON)]? { if case .object(let p) = self { p } else { nil } }
}
