import Simulation

/// Chrome trace event JSON (opens in Perfetto and chrome://tracing): one complete ("X")
/// event per step with its arguments and result, and counter ("C") events for the direct
/// map, the flush counters, host faults and the architecture's own tracks after each step, and
/// an instant event per recorded host fault on its CPU's track, at the middle of its step.
/// Time is logical: step n runs from n ms to n ms + 1 ms, so traces are byte-identical run to run.
public enum Trace {
    static let counters: [(track: String, metrics: [String])] = [
        ("DirectMap kB", ["directmap_4k_kb", "directmap_2m_kb", "directmap_1g_kb"]),
        ("splits", ["direct_map_level2_splits", "direct_map_level3_splits"]),
        ("TLB flushes", ["tlb_full_flushes", "tlb_page_flush_rounds"]),
        ("host faults", ["host_crashes", "not_present_faults"]),
    ]

    public static func render(_ r: RunResult) -> String {
        var events: [JSON] = [
            .object([("name", .string("process_name")), ("ph", .string("M")), ("pid", .int(1)),
                     ("args", .object([("name", .string("cocomem: \(r.scenario.name)"))]))]),
        ]
        events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(1)), ("tid", .int(1)),
                               ("args", .object([("name", .string("steps"))]))]))
        let faultCPUs = Set(r.machine.kernel.faultLog.records.map(\.cpu)).sorted()
        for cpu in faultCPUs {
            events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(1)), ("tid", .int(cpu + 2)),
                                   ("args", .object([("name", .string("CPU \(cpu) host faults"))]))]))
        }
        for rec in r.records {
            let ts = rec.index * 1000
            var args: [(String, JSON)] = rec.arguments.map { ($0.0, .string($0.1)) }
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
            for c in counters + r.scenario.architecture.traceTracks {
                let values: [(String, JSON)] = c.metrics.compactMap { name in rec.metrics.first { $0.0 == name }.map { (name, .number($0.1)) } }
                events.append(.object([("name", .string(c.track)), ("ph", .string("C")), ("ts", .int(ts + 1000)),
                                       ("pid", .int(1)), ("args", .object(values))]))
            }
        }
        return JSON.object([("traceEvents", .array(events)), ("displayTimeUnit", .string("ms"))]).render(indent: nil) + "\n"
    }
}
