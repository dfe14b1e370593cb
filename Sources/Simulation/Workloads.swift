import Hardware
import HostKernel
import PageTables

/// A seeded generator of many operations, run as one `workload:` step.
public struct WorkloadDefinition: Sendable {
    public let name: String
    public let summary: String
    public let parameters: [(name: String, help: String)]
    /// The source of the behaviour it stands for.
    let body: @Sendable (inout Machine, WorkloadRange, UInt64, Int) throws(HostKernelError) -> (errors: Int, first: String?)
}

/// The physical pages a workload picks from.
struct WorkloadRange: Sendable {
    let floor: UInt64
    let pages: UInt64

    func randomPage(_ m: inout Machine) -> PhysAddr {
        let i = m.rng.below(pages)
        return m.kernel.memory.ramPage(i, above: floor)!
    }
}

/// The registry of workloads.
public enum Workloads {
    static let common: [(String, String)] = [
        ("operations", "how many times to repeat the workload's unit of work"),
        ("from", "lowest physical address to pick pages from (default 1M)"),
        ("numpages", "pages per operation (default 1; cpa-churn only)"),
    ]

    public static let all: [WorkloadDefinition] = [
        WorkloadDefinition(
            name: "cpa-churn",
            summary: "set_memory_decrypted then set_memory_encrypted on random RAM pages (swiotlb-style bounce buffers on an SME host)",
            parameters: common
        ) { m, range, ops, numpages throws(HostKernelError) in
            try repeatOps(&m, ops) { m throws(HostKernelError) in
                let va = m.kernel.va(range.randomPage(&m)).rawValue
                let n = fit(m, va, numpages)
                let a = try m.apply(KernelOperation(name: "set_memory_decrypted", address: va, numpages: n))
                let b = try m.apply(KernelOperation(name: "set_memory_encrypted", address: va, numpages: n))
                return a != "ok" ? a : b
            }
        },
        WorkloadDefinition(
            name: "split-scatter",
            summary: "set_memory_4k on random RAM pages: direct-map fragmentation that is never undone",
            parameters: Array(common.prefix(2))
        ) { m, range, ops, _ throws(HostKernelError) in
            try repeatOps(&m, ops) { m throws(HostKernelError) in
                try m.apply(KernelOperation(name: "set_memory_4k", address: m.kernel.va(range.randomPage(&m)).rawValue, numpages: 1))
            }
        },
        WorkloadDefinition(
            name: "rox-cycle",
            summary: "set_memory_ro on one random page, then set_memory_rox on its whole 2M region (execmem-style: collapses under cpa-collapse rox)",
            parameters: Array(common.prefix(2))
        ) { m, range, ops, _ throws(HostKernelError) in
            try repeatOps(&m, ops) { m throws(HostKernelError) in
                let pa = range.randomPage(&m).rawValue
                let region = pa & ~(PageSize.size2M.bytes - 1)
                guard m.kernel.memory.isRAM(region..<region + PageSize.size2M.bytes) else { return "ok" }
                let a = try m.apply(KernelOperation(name: "set_memory_ro", address: m.kernel.va(PhysAddr(pa)).rawValue, numpages: 1))
                let b = try m.apply(KernelOperation(name: "set_memory_rox", address: m.kernel.va(PhysAddr(region)).rawValue, numpages: 512))
                return a != "ok" ? a : b
            }
        },
    ]

    /// Clamps a multi-page operation so it stays inside the direct map.
    static func fit(_ m: Machine, _ va: UInt64, _ numpages: Int) -> Int {
        min(numpages, Int((m.kernel.directMapEnd - va) / pageBytes))
    }

    static func repeatOps(_ m: inout Machine, _ ops: UInt64, _ body: (inout Machine) throws(HostKernelError) -> String) throws(HostKernelError) -> (errors: Int, first: String?) {
        var errors = 0
        var first: String?
        for i in 0..<ops {
            let r = try body(&m)
            if r.hasPrefix("-E") {
                errors += 1
                if first == nil { first = r }
            }
            if i & 4095 == 4095 { m.onProgress?(i + 1, ops) }
        }
        return (errors, first)
    }

    static func prepare(_ args: Field, index: Int, line: Int?, expect: String?, kernel: Kernel) throws(ScenarioError) -> PreparedStep {
        let fields = try args.mapping()
        let kindField = try fields.required("kind")
        let kind = try kindField.choice(all.map(\.name), what: "workload")
        let def = all.first { $0.name == kind }!
        try fields.only(["kind"] + def.parameters.map(\.name))
        let ops = try fields.required("operations").number(in: 1...1_000_000_000_000, what: "operations")
        let floor = try fields["from"]?.number() ?? Kernel.isaEnd
        let pages = kernel.memory.ramPages(above: floor)
        guard pages > 0 else { throw (fields["from"] ?? args).error("no RAM at or above \(hex(floor))") }
        let numpages = Int(try fields["numpages"]?.number(in: 1...512, what: "numpages") ?? 1)
        let range = WorkloadRange(floor: floor, pages: pages)
        var shown: [(String, String)] = [("kind", kind), ("operations", "\(ops)")]
        if fields["from"] != nil { shown.append(("from", hex(floor))) }
        if fields["numpages"] != nil { shown.append(("numpages", "\(numpages)")) }
        return PreparedStep(index: index, line: line, name: "workload", arguments: shown, expect: expect) { m throws(HostKernelError) in
            let (errors, first) = try def.body(&m, range, ops, numpages)
            return errors == 0 ? "ok" : "\(errors) of \(ops) failed (first \(first!))"
        }
    }
}
