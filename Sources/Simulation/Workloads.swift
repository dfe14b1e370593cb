import Hardware
import HostKernel
import PageTables

/// A seeded generator of many operations, run as one `workload:` step, with its parameters
/// declared once as a step's are.
public struct WorkloadDefinition: Sendable {
    public let name: String
    public let summary: String
    public let parameters: [Parameter]
    let prepare: @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> WorkloadBody

    public init(_ name: String, _ summary: String, _ parameters: [Parameter],
                prepare: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> WorkloadBody) {
        self.name = name
        self.summary = summary
        self.parameters = parameters
        self.prepare = prepare
    }
}

/// A workload ready to run: its operations, and how many failed with the first failure.
public typealias WorkloadBody = @Sendable (inout Machine) throws(HostKernelError) -> WorkloadTally

/// How many of a workload's operations returned a kernel error, and the first of them.
public struct WorkloadTally: Sendable {
    public var errors = 0
    public var first: (any Outcome)?
    public init() {}

    mutating func note(_ r: any Outcome) {
        guard r.isError else { return }
        errors += 1
        if first == nil { first = r }
    }

    /// `note` for an outcome that is usually a plain success: that costs one test.
    mutating func note(_ r: OKOr) {
        if !r.isOK, let o = r.other { note(o) }
    }
}

/// A workload's result: `ok`, or `N of M failed (first -EINVAL)`.
public struct WorkloadOutcome: Outcome {
    public let tally: WorkloadTally
    public let operations: UInt64
    public var kind: OutcomeKind { tally.errors == 0 ? .success : .error }
    public var description: String {
        tally.errors == 0 ? "ok" : "\(tally.errors) of \(operations) failed (first \(tally.first.map { "\($0)" } ?? "?"))"
    }
}

/// The physical pages a workload picks from.
struct WorkloadRange: Sendable {
    let floor: UInt64
    let pages: UInt64

    func randomPage(_ m: inout Machine) -> PhysAddr {
        let i = m.rng.below(pages)
        return m.kernel.memory.ramPage(i, above: floor)!
    }

    /// A random page of the range that `usable` accepts: up to 64 random draws, then a scan
    /// from a random page onwards (wrapping), so a range the workload cannot use at all ends
    /// with an error instead of drawing forever.
    func randomPage(_ m: inout Machine, where usable: (Machine, UInt64) -> Bool) throws(HostKernelError) -> PhysAddr {
        for _ in 0..<64 {
            let pa = randomPage(&m)
            if usable(m, pa.rawValue) { return pa }
        }
        let start = m.rng.below(pages)
        for k in 0..<pages {
            let pa = m.kernel.memory.ramPage((start + k) % pages, above: floor)!
            if usable(m, pa.rawValue) { return pa }
        }
        throw HostKernelError("no usable RAM page at or above \(hex(floor)): every one of its \(pages) pages belongs to a guest or the firmware")
    }

    /// The `from` parameter's range of RAM: page-aligned, with RAM above it.
    static func read(_ a: StepArguments, _ ctx: StepContext) throws(ScenarioError) -> WorkloadRange {
        let floor = a[number: "from"] ?? Kernel.isaEnd
        guard floor & (pageBytes - 1) == 0 else { throw a.field("from").error("from \(hex(floor)) is not page-aligned (a physical page address)") }
        let pages = ctx.kernel.memory.ramPages(above: floor)
        guard pages > 0 else { throw a.field("from").error("no RAM at or above \(hex(floor))") }
        return WorkloadRange(floor: floor, pages: pages)
    }
}

/// The registry of workloads: the host's, which every machine has, and each architecture's.
public enum Workloads {
    static let operations = Parameter("operations", .count(1...1_000_000_000_000), default: "1", "how many times to repeat the workload's unit of work")
    static let from = Parameter("from", .address(), "lowest physical address to pick pages from (default 1M)")

    /// The x86 kernel's change_page_attr workloads.
    public static let x86Host: [WorkloadDefinition] = [
        WorkloadDefinition(
            "cpa-churn",
            "set_memory_decrypted then set_memory_encrypted on random RAM pages (swiotlb-style bounce buffers on an SME host)",
            [operations, from, Parameter("numpages", .count(1...512), "pages per operation (default 1)")]
        ) { a, ctx throws(ScenarioError) in
            let range = try WorkloadRange.read(a, ctx), ops = a.number("operations"), numpages = Int(a[number: "numpages"] ?? 1)
            return { m throws(HostKernelError) in
                try repeatOps(&m, ops) { m throws(HostKernelError) in
                    let va = m.kernel.va(range.randomPage(&m)).rawValue
                    let n = min(numpages, Int((m.kernel.directMapEnd - va) / pageBytes))  // stays inside the direct map
                    let a = try m.apply(KernelOperation(name: "set_memory_decrypted", address: va, numpages: n))
                    let b = try m.apply(KernelOperation(name: "set_memory_encrypted", address: va, numpages: n))
                    return a.kind != .success ? a : b
                }
            }
        },
        WorkloadDefinition("split-scatter", "set_memory_4k on random RAM pages: direct-map fragmentation that is never undone", [operations, from]) { a, ctx throws(ScenarioError) in
            let range = try WorkloadRange.read(a, ctx), ops = a.number("operations")
            return { m throws(HostKernelError) in
                try repeatOps(&m, ops) { m throws(HostKernelError) in
                    try m.apply(KernelOperation(name: "set_memory_4k", address: m.kernel.va(range.randomPage(&m)).rawValue, numpages: 1))
                }
            }
        },
        WorkloadDefinition(
            "rox-cycle",
            "set_memory_ro on one random page, then set_memory_rox on its whole 2M region (execmem-style: collapses under cpa-collapse rox)",
            [operations, from]
        ) { a, ctx throws(ScenarioError) in
            let range = try WorkloadRange.read(a, ctx), ops = a.number("operations")
            return { m throws(HostKernelError) in
                try repeatOps(&m, ops) { m throws(HostKernelError) in
                    let pa = range.randomPage(&m).rawValue
                    let region = pa & ~(PageSize.size2M.bytes - 1)
                    guard m.kernel.memory.isRAM(region..<region + PageSize.size2M.bytes) else { return OK() }
                    let a = try m.apply(KernelOperation(name: "set_memory_ro", address: m.kernel.va(PhysAddr(pa)).rawValue, numpages: 1))
                    let b = try m.apply(KernelOperation(name: "set_memory_rox", address: m.kernel.va(PhysAddr(region)).rawValue, numpages: 512))
                    return a.kind != .success ? a : b
                }
            }
        },
    ]

    /// The workloads every host kernel has.
    public static let host: [WorkloadDefinition] = [
        WorkloadDefinition(
            "secretmem",
            "memfd_secret pages on random RAM: set_direct_map_invalid_noflush then flush_tlb_kernel_range (secretmem_fault), then set_direct_map_default_noflush (secretmem_free_folio)",
            [operations, from]
        ) { a, ctx throws(ScenarioError) in
            let range = try WorkloadRange.read(a, ctx), ops = a.number("operations")
            return { m throws(HostKernelError) in
                try repeatOps(&m, ops) { m throws(HostKernelError) in
                    let va = m.kernel.va(range.randomPage(&m)).rawValue
                    let a = try m.apply(KernelOperation(name: "set_direct_map_invalid_noflush", address: va, numpages: 1))
                    guard a.kind == .success else { return a }
                    _ = try m.apply(KernelOperation(name: "flush_tlb_kernel_range", address: va, numpages: 1))
                    return try m.apply(KernelOperation(name: "set_direct_map_default_noflush", address: va, numpages: 1))
                }
            }
        },
        WorkloadDefinition(
            "host-writes",
            "the host writes random RAM pages it owns in one context (kernel data, stacks …), on the CPUs in turn; counts how those writes end",
            [Parameter("operations", .count(1...1_000_000_000_000), default: "1", "how many writes"), from,
             Parameter("context", .choice(Steps.hostContexts), "host access context (default data)")]
        ) { a, ctx throws(ScenarioError) in
            let range = try WorkloadRange.read(a, ctx), ops = a.number("operations")
            let context = HostAccessContext(rawValue: a.text("context") ?? "data")!
            return { m throws(HostKernelError) in
                defer { m.kernel.faultLog.operation = nil }
                for i in 0..<ops {
                    // The host's own pages: skip pages given to a guest or the firmware.
                    let pa = try range.randomPage(&m) { m, pa in !m.platform.ownership.isGuestOwned(pfn: pa >> pageShift) }.rawValue
                    m.kernel.faultLog.operation = Int(i + 1)
                    _ = m.platform.hostAccess(&m.kernel, pa: pa, write: true, context: context, cpu: Int(i % UInt64(m.cpus)))
                    m.counters.operations += 1
                    m.tick(i + 1, ops)
                }
                return WorkloadTally()
            }
        },
    ]

    /// The workloads a machine of `architecture` has.
    public static func available(_ architecture: ArchitectureDefinition) -> [WorkloadDefinition] {
        (architecture.isa == .x86_64 ? x86Host : []) + host + architecture.workloads
    }

    /// Every workload of every architecture, for `list workloads` and the docs.
    public static var all: [WorkloadDefinition] { x86Host + host + Architectures.all.flatMap(\.workloads) }

    /// Runs `body` `ops` times, tallying kernel errors, with progress every 4096.
    public static func repeatOps(_ m: inout Machine, _ ops: UInt64, _ body: (inout Machine) throws(HostKernelError) -> any Outcome) throws(HostKernelError) -> WorkloadTally {
        var tally = WorkloadTally()
        for i in 0..<ops {
            tally.note(try body(&m))
            m.tick(i + 1, ops)
        }
        return tally
    }

    static func prepare(_ args: Field, index: Int, line: Int?, expect: String?, context: StepContext) throws(ScenarioError) -> PreparedStep {
        let fields = try args.mapping()
        let kindField = try fields.required("kind")
        let kind = try kindField.text()
        guard let def = available(context.architecture).first(where: { $0.name == kind }) else {
            let owners = Architectures.modelled.filter { a in available(a).contains { $0.name == kind } }
            if !owners.isEmpty {
                throw kindField.error("workload \(kind) needs " + owners.map { "'arch: \($0.name)'" }.joined(separator: " or ")
                    + "; this machine is \(context.architecture.name)")
            }
            throw kindField.error("unknown workload '\(kind)'" + Suggest.hint(kind, in: available(context.architecture).map(\.name), listedBy: "'cocomem list workloads'"))
        }
        var a = try StepArguments(args, schema: def.parameters, context: context, extraKeys: ["kind"])
        let body = try def.prepare(&a, context)
        let ops = a.number("operations")
        return PreparedStep(index: index, line: line, name: "workload", arguments: [("kind", kind)] + a.echoed, expect: expect) { m throws(HostKernelError) in
            WorkloadOutcome(tally: try body(&m), operations: ops)
        }
    }
}
