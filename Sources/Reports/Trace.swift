import Simulation

/// Chrome trace event JSON (opens in Perfetto and chrome://tracing): one complete ("X")
/// event per step with its arguments and result, and counter ("C") events for the direct
/// map, the flush counters, host faults and the architecture's own tracks after each step, and
/// an instant event per recorded host fault on its CPU's track, at the middle of its step.
/// Time is logical: step n runs from n ms to n ms + 1 ms, so traces are byte-identical run to
/// run; inside a workload, operation k of K is at n ms + k/K ms, each batch of operations (N
/// with `--sample N`, else a 64th) a slice with the counters at its end. A track per CPU
/// carries its faults. Numeric step arguments are numbers.
public enum Trace {
    static let counters: [(track: String, metrics: [String])] = [
        ("DirectMap kB", ["directmap_4k_kb", "directmap_2m_kb", "directmap_1g_kb"]),
        ("splits", ["direct_map_level2_splits", "direct_map_level3_splits"]),
        ("TLB flushes", ["tlb_full_flushes", "tlb_page_flush_rounds"]),
        ("host faults", ["host_crashes", "not_present_faults"]),
    ]

    /// A counter event per track, with `metrics`' values, at `ts`.
    static func counterEvents(_ r: RunResult, _ metrics: [(String, UInt64)], at ts: JSON) -> [JSON] {
        (counters + r.scenario.architecture.traceTracks).map { c in
            let values: [(String, JSON)] = c.metrics.compactMap { name in metrics.first { $0.0 == name }.map { (name, .number($0.1)) } }
            return .object([("name", .string(c.track)), ("ph", .string("C")), ("ts", ts), ("pid", .int(1)), ("args", .object(values))])
        }
    }

    /// A step argument that is a whole number (decimal or 0x hex) as a number.
    static func number(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") { return UInt64(text.dropFirst(2), radix: 16) }
        return UInt64(text)
    }

    public static func render(_ r: RunResult) -> String {
        var events: [JSON] = [
            .object([("name", .string("process_name")), ("ph", .string("M")), ("pid", .int(1)),
                     ("args", .object([("name", .string("cocomem: \(r.scenario.name)"))]))]),
        ]
        events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(1)), ("tid", .int(1)),
                               ("args", .object([("name", .string("steps"))]))]))
        for cpu in 0..<r.machine.cpus {
            events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(1)), ("tid", .int(cpu + 2)),
                                   ("args", .object([("name", .string("CPU \(cpu)"))]))]))
        }
        for rec in r.records {
            let ts = rec.index * 1000
            var args: [(String, JSON)] = rec.arguments.map { ($0.0, number($0.1).map { .number($0) } ?? .string($0.1)) }
            args.append(("result", .string(rec.result)))
            if let e = rec.expect { args.append(("expect", .string(e))) }
            events.append(.object([("name", .string(rec.name)), ("cat", .string("step")), ("ph", .string("X")),
                                   ("ts", .int(ts)), ("dur", .int(1000)), ("pid", .int(1)), ("tid", .int(1)), ("args", .object(args))]))
            // The step's faults as instant events on the faulting CPU's track (thread cpu + 2).
            for f in r.machine.kernel.faultLog.records where f.step == rec.index {
                events.append(.object([("name", .string("#PF \(f.cause) -> \(f.end)")), ("cat", .string("fault")), ("ph", .string("i")),
                                       ("s", .string("t")), ("ts", .int(ts + 500)), ("pid", .int(1)), ("tid", .int(f.cpu + 2)),
                                       ("args", RunReport.faultJSON(f))]))
            }
            // A workload sampled with --sample: a slice per batch of operations inside the step's
            // slice, and the counters at the end of each batch, at its share of the step's 1 ms.
            var done: UInt64 = 0
            for s in r.samples + r.batches where s.step == rec.index {
                guard let op = s.operation, let total = s.total, total > 0 else { continue }
                let from = Double(ts) + 1000 * Double(done) / Double(total), to = Double(ts) + 1000 * Double(op) / Double(total)
                let kind = rec.arguments.first { $0.0 == "kind" }?.1 ?? rec.name
                events.append(.object([("name", .string("\(kind) ops \(done + 1)-\(op)")), ("cat", .string("batch")), ("ph", .string("X")),
                                       ("ts", .double(from)), ("dur", .double(to - from)), ("pid", .int(1)), ("tid", .int(1)),
                                       ("args", .object([("operations", .number(op - done)), ("of", .number(total))]))]))
                events += counterEvents(r, s.metrics, at: .double(to))
                done = op
            }
            events += counterEvents(r, rec.metrics, at: .int(ts + 1000))
        }
        return JSON.object([("traceEvents", .array(events)), ("displayTimeUnit", .string("ms"))]).render(indent: nil) + "\n"
    }
}
