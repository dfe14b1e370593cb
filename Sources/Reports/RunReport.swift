import HostKernel
import PageTables
import Simulation

/// Renders a run: a summary table for a terminal, JSON and CSV for tools, TAP for `check`.
public enum RunReport {
    /// The summary: scenario, policies, a crash first, failed expectations, the first
    /// `faults` fault records (then a count), metrics, checks.
    public static func summary(_ r: RunResult, faults shown: Int = 10) -> String {
        var out = "scenario  \(r.scenario.name)  (\(r.scenario.file), seed \(r.scenario.seed), \(r.records.count) steps)\n"
        let policies = r.scenario.policies.map { "\($0.slot)=\($0.policy)" }.joined(separator: " ")
        if !policies.isEmpty { out += "policies  \(policies)\n" }
        let log = r.machine.kernel.faultLog
        if let crash = log.firstCrash {
            out += "\nHOST CRASHED  \(r.machine.kernel.faults.hostCrashes) host access\(r.machine.kernel.faults.hostCrashes == 1 ? "" : "es") brought the host down; the first:\n  \(crash.line)\n"
        }
        if let f = r.failure { out += "\nSTOPPED   \(f)\n" }
        let failed = r.failedExpectations
        out += "\nexpectations  \(r.records.filter { $0.expect != nil }.count - failed.count) passed, \(failed.count) failed\n"
        for rec in failed {
            out += "  FAIL step \(rec.index)\(rec.line.map { " (line \($0))" } ?? "") \(rec.name): expected \(rec.expect!), got \(rec.result)\n"
        }
        if log.total > 0 {
            let n = min(shown, log.records.count)
            out += "\nhost faults  \(log.total)" + (n < log.total ? " (the first \(n); --faults N shows more)" : "") + "\n"
            for rec in log.records.prefix(n) { out += "  \(rec.line)\n" }
        }
        out += "\n" + table(["metric", "value"], r.metrics.map { [$0.0, String($0.1)] }, rightAlign: [1])
        out += "(operations: the steps that act on the machine, not switches such as fail_page_alloc, and a workload's\n"
            + " operations one by one; errors: those that returned a kernel error, -E…, expected ones included; a\n"
            + " hardware status such as FAIL_OVERLAP or a fault is an answer, not an error)\n"
        if !r.checks.isEmpty {
            out += "\nchecks\n"
            for c in r.checks {
                out += "  \(c.passed ? "PASS" : "FAIL")  \(c.description)\(c.passed ? "" : "  (\(c.detail))")\n"
            }
        }
        out += "\n" + (r.passed ? "PASS" : "FAIL") + "\n"
        return out
    }

    /// A plain text table with a header rule; columns in `rightAlign` are right-aligned.
    public static func table(_ header: [String], _ rows: [[String]], rightAlign: Set<Int> = []) -> String {
        let widths = header.indices.map { c in ([header[c]] + rows.map { $0[c] }).map(\.count).max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { c, s in
                let gap = String(repeating: " ", count: widths[c] - s.count)
                return rightAlign.contains(c) ? gap + s : s + gap
            }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
        }
        return line(header) + line(widths.map { String(repeating: "-", count: $0) }) + rows.map(line).joined()
    }

    /// The whole run as one JSON object, keys in a fixed order.
    public static func json(_ r: RunResult) -> String {
        func metrics(_ m: [(String, UInt64)]) -> JSON { .object(m.map { ($0.0, .number($0.1)) }) }
        let steps: [JSON] = r.records.map { rec in
            .object([
                ("index", .int(rec.index)), ("line", rec.line.map { .int($0) } ?? .null), ("step", .string(rec.name)),
                ("args", .object(rec.arguments.map { ($0.0, .string($0.1)) })), ("result", .string(rec.result)),
                ("expect", rec.expect.map { .string($0) } ?? .null), ("passed", rec.passed.map { .bool($0) } ?? .null),
            ])
        }
        var top: [(String, JSON)] = [
            ("scenario", .string(r.scenario.name)), ("file", .string(r.scenario.file)), ("seed", .number(r.scenario.seed)),
            ("policies", .object(r.scenario.policies.map { ($0.slot, .string($0.policy)) })),
            ("steps", .array(steps)), ("metrics", metrics(r.metrics)),
            ("checks", .array(r.checks.map { .object([("check", .string($0.description)), ("passed", .bool($0.passed)), ("detail", .string($0.detail))]) })),
        ]
        if !r.samples.isEmpty {
            let samples: [JSON] = r.samples.map { s in
                .object([("step", .int(s.step)), ("operation", s.operation.map { .number($0) } ?? .null),
                         ("of", s.total.map { .number($0) } ?? .null), ("metrics", metrics(s.metrics))])
            }
            top.append(("samples", .array(samples)))
        }
        let log = r.machine.kernel.faultLog
        let faultRecords: [JSON] = log.records.map { faultJSON($0) }
        top.append(("faults", .object([("total", .int(log.total)), ("records", .array(faultRecords))])))
        top.append(("invariant_failure", r.failure.map { .object([("step", .int($0.step)), ("invariant", .string($0.invariant)), ("detail", .string($0.detail))]) } ?? .null))
        top.append(("passed", .bool(r.passed)))
        return JSON.object(top).render() + "\n"
    }

    /// A fault record as JSON, keys in a fixed order; addresses as hex strings.
    public static func faultJSON(_ f: HostFaultRecord) -> JSON {
        var fields: [(String, JSON)] = [("step", .int(f.step)), ("operation", f.operation.map { .int($0) } ?? .null), ("cpu", .int(f.cpu))]
        fields.append(("va", .string(hex(f.va, digits: 16))))
        fields.append(("pa", .string(hex(f.pa))))
        fields.append(("access", .string(f.write ? "write" : "read")))
        fields.append(("context", .string(f.context.rawValue)))
        fields.append(("mapping", .string(f.mappedBy)))
        fields.append(("cause", .string(f.cause.description)))
        fields.append(("error_code", .string(hex(f.errorCode))))
        fields.append(("reason", .string(f.reason)))
        fields.append(("end", .string(f.end.rawValue)))
        fields.append(("crashed", .bool(f.end.crashes)))
        fields.append(("line", .string(f.line)))
        return .object(fields)
    }

    /// CSV, two tables: without samples the metrics (`metric,value`, one row each); with
    /// samples one row per sample, wide: `step,operation,` then every metric, `operation`
    /// empty for a sample after a step and the operations done for one inside a workload.
    public static func csv(_ r: RunResult) -> String {
        if r.samples.isEmpty {
            return "metric,value\n" + r.metrics.map { "\($0.0),\($0.1)\n" }.joined()
        }
        var out = "step,operation," + r.samples[0].metrics.map(\.0).joined(separator: ",") + "\n"
        for s in r.samples {
            out += "\(s.step),\(s.operation.map(String.init) ?? "")," + s.metrics.map { String($0.1) }.joined(separator: ",") + "\n"
        }
        return out
    }

    /// TAP version 13: one test point per expectation and per check.
    public static func tap(_ results: [RunResult]) -> String { tap(results.map { .success($0) }) }

    /// TAP for scenario files in order: a file that could not be read or run is one failing
    /// test point naming the file and why, and the others still report.
    public static func tap(_ outcomes: [Result<RunResult, FileFailure>]) -> String {
        var points: [(Bool, String, String?)] = []
        for outcome in outcomes {
            let r: RunResult
            switch outcome {
            case .success(let run): r = run
            case .failure(let f):
                points.append((false, "\(f.file) could not be run", f.message))
                continue
            }
            for rec in r.records where rec.expect != nil {
                let where_ = "\(r.scenario.file):\(rec.line.map(String.init) ?? "?")"
                points.append((rec.passed == true, "\(where_) step \(rec.index) \(rec.name) = \(rec.expect!)",
                               rec.passed == true ? nil : "got: \(rec.result)"))
            }
            for c in r.checks {
                points.append((c.passed, "\(r.scenario.file):\(c.line.map(String.init) ?? "?") check \(c.description)", c.passed ? nil : c.detail))
            }
            if let f = r.failure { points.append((false, "\(r.scenario.file) invariants", f.description)) }
        }
        var out = "TAP version 13\n1..\(points.count)\n"
        for (i, p) in points.enumerated() {
            out += "\(p.0 ? "ok" : "not ok") \(i + 1) - \(tapDescription(p.1))\n"
            if let d = p.2 { out += "  ---\n  message: \(JSON.quote(d))\n  ...\n" }
        }
        return out
    }
}

/// A scenario file `check` could not read or run, and why.
public struct FileFailure: Error, Sendable {
    public let file: String
    public let message: String
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }
}

extension RunReport {
    /// A test point's description on one line: control characters as `\n`, `\t`, `\u{…}`,
    /// and `#` and `\` escaped with a backslash, so user text (an `expect:`, a scenario
    /// name) can neither start a new test point nor a TAP directive (TAP 13: "# SKIP").
    static func tapDescription(_ s: String) -> String {
        s.escaped { u in
            switch u {
            case "\n": "\\n"
            case "\r": "\\r"
            case "\t": "\\t"
            case "#": "\\#"
            case "\\": "\\\\"
            case _ where u.value < 0x20 || (0x7f...0x9f).contains(u.value) || u == "\u{2028}" || u == "\u{2029}":
                "\\u{\(String(u.value, radix: 16))}"
            default: nil
            }
        }
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
