import Hardware
import HostKernel
import PageTables
import Yams

/// A scenario as read from its file: the machine, the policies, the steps and the checks,
/// every step already checked against the registries and the booted machine.
public struct Scenario: Sendable {
    public let file: String
    public let name: String
    public let seed: UInt64
    public let architecture: ArchitectureDefinition
    public let cpus: Int
    public let memory: PhysicalMemory
    public let kernelConfig: KernelConfig
    /// The guests, in document order.
    public let guests: [GuestSpec]
    /// Chosen policies by slot, in registry order (defaults included).
    public let policies: [(slot: String, policy: String)]
    public let steps: [PreparedStep]
    public let checks: [PreparedCheck]
    /// The user processes the steps name, each in the host's kernel or a guest's.
    public internal(set) var processes: [ProcessSpec] = []
    /// One list of routines per CPU, run interleaved after `steps` (docs/explorer.md).
    public internal(set) var threads: [[ThreadRoutine]] = []
    /// What listings call each thread: `CPU n`, or the `name:` a thread gives (an NMI).
    public internal(set) var threadNames: [String] = []
    /// Conditions that hold at every state of the threads' interleavings.
    public internal(set) var asserts: [PreparedCheck] = []
    /// The CPUs in the order `run` replays them (a counterexample's schedule).
    public internal(set) var schedule: [Int]?

    /// The invariants the scenario's checks say end broken (it shows a bug on purpose).
    public var brokenInvariants: [String] { checks.compactMap(\.brokenInvariant) }

    /// A fresh machine booted as the scenario says.
    public func boot() throws(ScenarioError) -> Machine {
        do {
            var m = try Machine(architecture: architecture, kernel: try Kernel(memory: memory, config: kernelConfig),
                                guests: guests, seed: seed)
            m.addProcesses(processes)
            return m
        } catch {
            throw ScenarioError(file: file, line: nil, column: nil, field: "machine", error.message)
        }
    }
}

/// A step ready to run: its name, its arguments as text, and what it does.
public struct PreparedStep: Sendable {
    /// 1-based position in `steps`.
    public let index: Int
    public let line: Int?
    public let name: String
    /// Arguments in document order, normalised (numbers in hex).
    public let arguments: [(String, String)]
    public let expect: String?
    let action: StepAction
}

/// An end check ready to evaluate.
public struct PreparedCheck: Sendable {
    public let name: String
    /// What it asserts, e.g. `directmap 4k <= 8M`.
    public let description: String
    public let line: Int?
    /// For `broken-invariant`: the invariant this scenario shows broken, which `--check`
    /// therefore leaves out after each step.
    public var brokenInvariant: String? = nil
    /// The `invariants` check: every invariant, walked in full. A `--check` run has just
    /// done that after its last step, so it does not walk again.
    var walksEveryInvariant = false
    let evaluate: @Sendable (Machine, [StepRecord]) -> (passed: Bool, detail: String)
}

extension Scenario {
    /// Largest scenario file read, in bytes.
    public static let maxBytes = 4 << 20
    /// Most YAML nodes a document may expand to (aliases count each time they are used).
    public static let maxNodes = 1_000_000
    /// Deepest flow nesting ([ and {) accepted.
    public static let maxFlowDepth = 256

    /// Reads and checks a scenario. `policyOverrides` (slot → policy) replace the file's
    /// choices, as `cocomem compare` does.
    public static func load(yaml text: String, file: String, policyOverrides: [(String, String)] = []) throws(ScenarioError) -> Scenario {
        func docError(_ m: String) -> ScenarioError { ScenarioError(file: file, line: nil, column: nil, field: "", m) }
        guard text.utf8.count <= maxBytes else {
            throw docError("the document is \(text.utf8.count) bytes; at most \(maxBytes) are read")
        }
        if let problem = YAMLPrescan.check(text, maxFlowDepth: maxFlowDepth) {
            throw ScenarioError(file: file, line: problem.line, column: nil, field: "", problem.message)
        }
        let node: Node
        do {
            guard let n = try Yams.compose(yaml: text) else { throw docError("the document is empty") }
            node = n
        } catch let e as ScenarioError {
            throw e
        } catch let e as YamlError {
            throw yamlError(e, file: file)
        } catch {
            throw docError("cannot read YAML: \(error)")
        }
        var budget = maxNodes
        guard countNodes(node, budget: &budget) else {
            throw docError("the document expands to more than \(maxNodes) nodes (YAML aliases?); refused")
        }
        return try ScenarioReader(file: file, overrides: policyOverrides).read(Field(node: node, path: "", file: file))
    }

    static func countNodes(_ node: Node, budget: inout Int) -> Bool {
        budget -= 1
        if budget < 0 { return false }
        switch node {
        case .scalar, .alias: return true
        case .sequence(let s):
            for n in s where !countNodes(n, budget: &budget) { return false }
            return true
        case .mapping(let m):
            for (k, v) in m where !countNodes(k, budget: &budget) || !countNodes(v, budget: &budget) { return false }
            return true
        }
    }

    static func yamlError(_ e: YamlError, file: String) -> ScenarioError {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            // libyaml's own words name its C API; say what the user can change instead.
            let said = problem.hasPrefix("Maximum nesting level reached")
                ? "the document nests deeper than libyaml's limit of 1000 levels; flatten it" : problem
            return ScenarioError(file: file, line: mark.line, column: mark.column, field: "", "YAML: \(said)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ScenarioError(file: file, line: context.mark.line, column: context.mark.column, field: "",
                                 "a mapping repeats \(duplicates.map { "'\($0)'" }.joined(separator: ", ")); each key may appear once")
        default:
            let first = "\(e)".split(separator: "\n").first.map(String.init) ?? "unreadable"
            return ScenarioError(file: file, line: nil, column: nil, field: "", "YAML: \(first)")
        }
    }
}

/// What the parser must never be given, found by a scan of the text before parsing (the
/// parser itself would hang or exhaust the stack first): flow collections nested past the
/// limit, and aliases used as mapping keys (hashing a key that expands to billions of nodes
/// never ends). The scan skips quoted strings, comments and block scalars, so a `[` inside
/// a string is text.
enum YAMLPrescan {
    static func check(_ text: String, maxFlowDepth: Int) -> (line: Int, message: String)? {
        var depth = 0, line = 1
        var quote: UInt8?  // the open quote character
        var blockIndent: Int?  // inside a block scalar whose key line had this indentation
        let bytes = Array(text.utf8)
        var i = 0
        func indentation(at start: Int) -> Int {
            var k = start
            while k < bytes.count && bytes[k] == UInt8(ascii: " ") { k += 1 }
            return k - start
        }
        var lineStart = true
        while i < bytes.count {
            let c = bytes[i]
            if lineStart {
                lineStart = false
                if let indent = blockIndent {
                    let n = indentation(at: i)
                    let blank = i + n >= bytes.count || bytes[i + n] == UInt8(ascii: "\n")
                    if blank || n > indent {  // still inside the block scalar: skip the line
                        while i < bytes.count && bytes[i] != UInt8(ascii: "\n") { i += 1 }
                        continue
                    }
                    blockIndent = nil
                }
            }
            if c == UInt8(ascii: "\n") { line += 1; lineStart = true; i += 1; continue }
            if let q = quote {
                if c == UInt8(ascii: "\\") && q == UInt8(ascii: "\"") { i += 2; continue }
                if c == q {
                    if q == UInt8(ascii: "'") && i + 1 < bytes.count && bytes[i + 1] == q { i += 2; continue }  // '' is a quote
                    quote = nil
                }
                i += 1
                continue
            }
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                quote = c
            case UInt8(ascii: "#") where i == 0 || bytes[i - 1] == UInt8(ascii: " ") || bytes[i - 1] == UInt8(ascii: "\t"):
                while i < bytes.count && bytes[i] != UInt8(ascii: "\n") { i += 1 }
                continue
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > maxFlowDepth { return (line, "flow collections nest more than \(maxFlowDepth) deep") }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth = max(0, depth - 1)
            case UInt8(ascii: "|") where depth == 0, UInt8(ascii: ">") where depth == 0:
                // A block scalar indicator ends its line (with optional chomping/indent).
                var k = i + 1
                while k < bytes.count, [UInt8(ascii: "-"), UInt8(ascii: "+")].contains(bytes[k]) || (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(bytes[k]) { k += 1 }
                while k < bytes.count && bytes[k] == UInt8(ascii: " ") { k += 1 }
                if k >= bytes.count || bytes[k] == UInt8(ascii: "\n") || bytes[k] == UInt8(ascii: "#") {
                    var start = i
                    while start > 0 && bytes[start - 1] != UInt8(ascii: "\n") { start -= 1 }
                    blockIndent = indentation(at: start)
                }
            case UInt8(ascii: "*") where i == 0 || [UInt8(ascii: " "), UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","), UInt8(ascii: "?"),
                                                    UInt8(ascii: "\t"), UInt8(ascii: "\n")].contains(bytes[i - 1]):
                // An alias: refused when it is a key (followed by ':' or after '?').
                var k = i + 1
                while k < bytes.count, !([UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: ":")].contains(bytes[k])) { k += 1 }
                var after = k
                while after < bytes.count && bytes[after] == UInt8(ascii: " ") { after += 1 }
                var before = i - 1
                while before >= 0 && bytes[before] == UInt8(ascii: " ") { before -= 1 }
                let explicitKey = before >= 0 && bytes[before] == UInt8(ascii: "?")
                if explicitKey || (after < bytes.count && bytes[after] == UInt8(ascii: ":")) {
                    return (line, "a YAML alias used as a mapping key is refused (it can expand without bound); write the key out")
                }
            default:
                break
            }
            i += 1
        }
        return nil
    }
}
