import HostKernel
import PageTables

/// One argument of a step or workload, declared once: its name, what it reads, its default
/// and its help. Help text, parsing, validation and the arguments a run echoes all come from
/// this declaration.
public struct Parameter: Sendable {
    public enum Kind: Sendable {
        /// A number (hex, decimal or a size), within `range` when given; echoed in hex.
        case address(ClosedRange<UInt64>? = nil)
        /// A count or identifier, within `range` when given; echoed in decimal.
        case count(ClosedRange<UInt64>? = nil)
        case bool
        case choice([String])
        /// Letters from `letters`, each at most once, in any order (a protection like `RW`);
        /// an empty value is allowed.
        case letters(String)
        /// A name the scenario gives (a VMA, a VM): letters, digits, `-`, `_`, `.`; 1 to 64.
        case name
        /// Flags from `tokens` joined with `|`, as C writes them (`PROT_READ|PROT_WRITE`).
        case flags([String])
        /// A guest named in the scenario's `guests:`.
        case guest
        /// A guest's name, or `all` for every guest (the guest is then nil).
        case guestOrAll
        /// A physical address below the end of RAM (the model's reach; misalignment is left
        /// for the hardware or kernel to answer).
        case physical
        /// An address held in a field of `bits` bits (the model's width for it, named by
        /// `holder`); a larger value is a scenario error, never truncated.
        case width(bits: Int, holder: String)
    }

    public let name: String
    public let kind: Kind
    /// The value when the field is absent; nil with `required` false means "absent".
    public let defaultValue: String?
    public let required: Bool
    public let help: String

    public init(_ name: String, _ kind: Kind, default defaultValue: String? = nil, required: Bool = false, _ help: String) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.required = required
        self.help = help
    }

    /// The help line: what it is, its valid values and its default.
    public var helpLine: String {
        var text = help
        switch kind {
        case .choice(let c): text += " (one of \(c.joined(separator: ", ")))"
        case .letters(let l): text += " (letters of \(l))"
        case .flags(let t): text += " (joined with |: \(t.joined(separator: ", ")))"
        case .bool: text += " (true or false)"
        case .guestOrAll: text += " (a guest's name, or all)"
        default: break
        }
        if required { text += "; required" } else if let d = defaultValue { text += "; default \(d)" }
        return text
    }
}

/// A step's or workload's arguments as read against its schema: typed values, what to echo,
/// and the fields for errors that must point at one of them.
public struct StepArguments: Sendable {
    public let fields: Fields
    let schema: [Parameter]
    var numbers: [String: UInt64] = [:]
    var texts: [String: String] = [:]
    /// Echoes set by the step itself (`show`), in place of the value's usual form.
    var shown: [String: String] = [:]
    /// The guest a `guest` argument named: its index and spec.
    public private(set) var guest: (index: Int, spec: GuestSpec)?

    /// Reads `field` (a mapping) against `schema`: unknown keys get "did you mean", required
    /// ones must be there, every value is parsed by its kind.
    init(_ field: Field, schema: [Parameter], context: StepContext, extraKeys: [String] = []) throws(ScenarioError) {
        fields = field.isScalar && (try? field.text()) == "" ? try Field.emptyMapping(at: field) : try field.mapping()
        self.schema = schema
        try fields.only(schema.map(\.name) + extraKeys)
        for a in schema {
            guard let f = fields[a.name] else {
                if a.required { throw fields.owner.error("'\(a.name)' is required: \(a.help)") }
                if let d = a.defaultValue { setDefault(a, d) }
                continue
            }
            try read(a, f, context: context)
        }
    }

    mutating func setDefault(_ a: Parameter, _ d: String) {
        switch a.kind {
        case .address, .physical, .count, .width: numbers[a.name] = ByteSize.parse(d) ?? 0
        case .bool, .choice, .letters, .guest, .guestOrAll, .name, .flags: texts[a.name] = d
        }
    }

    mutating func read(_ a: Parameter, _ f: Field, context: StepContext) throws(ScenarioError) {
        switch a.kind {
        case .address(let range), .count(let range):
            numbers[a.name] = try Self.number(f, range, a.name)
        case .width(let bits, let holder):
            let v = try f.number()
            guard v >> bits == 0 else { throw f.error("\(a.name) \(hex(v)) is past the \(bits)-bit width of \(holder)") }
            numbers[a.name] = v
        case .physical:
            let v = try f.number()
            let end = context.kernel.memory.endOfRAM
            guard v < end else { throw f.error("\(hex(v)) is past the end of RAM (\(hex(end)))") }
            numbers[a.name] = v
        case .bool:
            texts[a.name] = "\(try f.bool())"
        case .name:
            let v = try f.text()
            guard (1...64).contains(v.count), v.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw f.error("\(a.name) '\(v)': a name is 1 to 64 letters, digits, '-', '_' or '.'")
            }
            texts[a.name] = v
        case .choice(let choices):
            texts[a.name] = try f.choice(choices, what: a.name)
        case .flags(let tokens):
            let v = try f.text()
            for t in flagTokens(v) {
                guard tokens.contains(t) else {
                    throw f.error("unknown flag '\(t)' in \(a.name) '\(v)'" + Suggest.hint(t, in: tokens, listedBy: "'cocomem list steps'") + " (valid: \(tokens.joined(separator: ", ")))")
                }
            }
            texts[a.name] = v
        case .letters(let letters):
            let v = try f.text()
            for (i, c) in v.enumerated() {
                guard letters.contains(c) else { throw f.error("'\(c)' is not a letter \(a.name) takes (valid: \(letters.map(String.init).joined(separator: ", ")))") }
                guard !v.prefix(i).contains(c) else { throw f.error("'\(c)' is given twice in \(a.name) '\(v)'") }
            }
            texts[a.name] = v
        case .guest, .guestOrAll:
            let name = try f.text()
            if case .guestOrAll = a.kind, name == "all", !context.guests.isEmpty {
                texts[a.name] = name
                return
            }
            guard let i = context.guests.firstIndex(where: { $0.name == name }) else {
                throw f.error("unknown guest '\(name)'" + (context.guests.isEmpty ? "; this scenario defines no guests"
                    : Suggest.hint(name, in: context.guests.map(\.name), listedBy: "the scenario's guests:")))
            }
            guest = (i, context.guests[i])
            texts[a.name] = name
        }
    }

    /// How argument `a` is echoed: as the step set it, else addresses in hex, counts in
    /// decimal, the rest as written; nil when it is absent.
    func echo(_ a: Parameter) -> String? {
        if let s = shown[a.name] { return s }
        switch a.kind {
        case .address, .physical, .width: return numbers[a.name].map { hex($0) }
        case .count: return numbers[a.name].map { "\($0)" }
        case .bool, .choice, .letters, .guest, .guestOrAll, .name, .flags: return texts[a.name]
        }
    }

    static func number(_ f: Field, _ range: ClosedRange<UInt64>?, _ what: String) throws(ScenarioError) -> UInt64 {
        guard let range else { return try f.number() }
        return try f.number(in: range, what: what)
    }

    public subscript(number name: String) -> UInt64? { numbers[name] }
    public func number(_ name: String) -> UInt64 { numbers[name] ?? 0 }
    public func bool(_ name: String) -> Bool { texts[name] == "true" }
    public func text(_ name: String) -> String? { texts[name] }
    public func has(_ name: String) -> Bool { fields[name] != nil }
    /// The field itself, for an error about its value.
    public func field(_ name: String) -> Field { fields[name] ?? fields.owner }

    /// Echo `name` as `text` instead of its parsed form (e.g. a permission mask's names).
    public mutating func show(_ name: String, _ text: String) { shown[name] = text }

    /// The arguments to echo, in schema order, the absent optional ones left out.
    public var echoed: [(String, String)] { schema.compactMap { a in echo(a).map { (a.name, $0) } } }
}

extension Field {
    /// An empty mapping standing at `field`'s place (a step written `- launch:` with nothing).
    static func emptyMapping(at field: Field) throws(ScenarioError) -> Fields {
        Fields(entries: [], keys: [], owner: field)
    }
}
