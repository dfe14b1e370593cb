/// What kind of answer an operation gave: how a run counts it and whether `no-errors` minds.
public enum OutcomeKind: UInt8, Hashable, Sendable {
    /// It did what was asked (`ok`, `ok (CF=1)`, an RMPREAD's entry, vmap's address).
    case success
    /// The hardware or firmware refused with a documented status (`FAIL_OVERLAP`,
    /// `TDX_OPERAND_INVALID`, `RMI_ERROR_RTT(2)`): an answer, not a kernel error.
    case status
    /// The hardware raised a fault or an exit (`#PF(RMP)`, `NPF(RMP|ENC)`, `#VC(0x404)`,
    /// `KVM_EXIT_MEMORY_FAULT`).
    case fault
    /// A kernel function returned a negative errno (`-EINVAL`), or a workload's operations did.
    case error
}

/// A step's result as a value: it prints in the specification's terms, and says itself what
/// kind of answer it is, so nothing is decided by reading the printed text.
public protocol Outcome: Sendable, CustomStringConvertible {
    var kind: OutcomeKind { get }
}

extension Outcome {
    /// A kernel error (what the `errors` metric and the `no-errors` check count).
    public var isError: Bool { kind == .error }
    /// Whether the scenario's `expect:` text names this result: its printed form, exactly.
    public func matches(_ expectation: String) -> Bool { description == expectation }
}

/// A plain success with nothing to add: prints `ok`.
public struct OK: Outcome, Hashable {
    public init() {}
    public var kind: OutcomeKind { .success }
    public var description: String { "ok" }
}

/// A successful read or allocation whose answer is a value (RMPREAD's entry, vmap's address),
/// printed as the specification shows it.
public struct ValueOutcome: Outcome, Hashable {
    public let text: String
    public init(_ text: String) { self.text = text }
    public var kind: OutcomeKind { .success }
    public var description: String { text }
}

/// An outcome that is nearly always a plain success, held so that success costs nothing:
/// a null reference for `ok`, the outcome in a box otherwise. Hot paths return it instead of
/// `(any Outcome)?` or an enum around `any Outcome`: those are copied and destroyed through
/// runtime metadata and value witnesses (an indirect call each), this with a null test.
public struct OKOr: Outcome {
    @usableFromInline let box: OutcomeBox?
    @inlinable init(box: OutcomeBox?) { self.box = box }

    /// A plain success.
    @inlinable public static var ok: OKOr { OKOr(box: nil) }
    /// What the operation came to when that was not a plain success.
    @inlinable public static func other(_ outcome: any Outcome) -> OKOr { OKOr(box: OutcomeBox(outcome)) }

    /// The outcome, when it was not a plain success.
    @inlinable public var other: (any Outcome)? { box?.outcome }
    @inlinable public var isOK: Bool { box == nil }
    public var kind: OutcomeKind { box?.outcome.kind ?? .success }
    public var description: String { box?.outcome.description ?? "ok" }
}

/// The outcome an `OKOr` keeps when it is not `ok`.
public final class OutcomeBox: Sendable {
    public let outcome: any Outcome
    @inlinable init(_ outcome: any Outcome) { self.outcome = outcome }
}

/// An outcome together with what happened on the way to it (`ok (gmem prepare 2M)`): the
/// kind is the final outcome's.
public struct AnnotatedOutcome: Outcome {
    public let outcome: any Outcome
    public let notes: [String]
    public init(_ outcome: any Outcome, notes: [String]) {
        self.outcome = outcome
        self.notes = notes
    }
    public var kind: OutcomeKind { outcome.kind }
    public var description: String { notes.isEmpty ? outcome.description : "\(outcome) (\(notes.joined(separator: ", ")))" }
}

/// A typed name for a kind of fault an ownership check raises (`RMP` on SEV-SNP), so fault
/// records and counters compare values, not printed text.
public struct FaultKind: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }
}

extension StaticString {
    /// The same text, byte for byte (no String made): for outcomes that keep a StaticString
    /// and compare as values.
    @inlinable public func hasSameText(as other: StaticString) -> Bool {
        utf8Start == other.utf8Start || withUTF8Buffer { x in other.withUTF8Buffer { y in x.elementsEqual(y) } }
    }

    /// Hashes the text's bytes (what `hasSameText` compares).
    @inlinable public func hashText(into h: inout Hasher) { withUTF8Buffer { h.combine(bytes: UnsafeRawBufferPointer($0)) } }
}

/// A reason in the model's words, kept as the StaticString it was written as (no String made
/// per outcome) but compared and hashed by its text, so an outcome that carries one
/// synthesizes Equatable and Hashable from its fields instead of comparing descriptions.
public struct Why: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let text: StaticString
    public init(stringLiteral text: StaticString) { self.text = text }
    public static func == (a: Why, b: Why) -> Bool { a.text.hasSameText(as: b.text) }
    public func hash(into h: inout Hasher) { text.hashText(into: &h) }
    public var description: String { "\(text)" }
}
