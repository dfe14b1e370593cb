import Hardware
import HostKernel
import PageTables

/// A seeded generator of many operations, run as one `workload:` step.
public struct WorkloadDefinition: Sendable {
    public let name: String
    public let summary: String
    public let parameters: [(name: String, help: String)]
    /// Whether it drives a guest (`guest:` required, SEV-SNP machines only).
    let needsGuest: Bool
    let body: @Sendable (inout Machine, WorkloadArgs) throws(HostKernelError) -> (errors: Int, first: String?)

    init(name: String, summary: String, parameters: [(name: String, help: String)], needsGuest: Bool = false,
         body: @escaping @Sendable (inout Machine, WorkloadArgs) throws(HostKernelError) -> (errors: Int, first: String?)) {
        self.name = name
        self.summary = summary
        self.parameters = parameters
        self.needsGuest = needsGuest
        self.body = body
    }
}

/// A workload's parameters, checked.
struct WorkloadArgs: Sendable {
    let range: WorkloadRange
    let operations: UInt64
    let numpages: Int
    let guest: GuestSpec?
    let context: HostAccessContext
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
        ) { m, a throws(HostKernelError) in
            try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                let va = m.kernel.va(a.range.randomPage(&m)).rawValue
                let n = fit(m, va, a.numpages)
                let a = try m.apply(KernelOperation(name: "set_memory_decrypted", address: va, numpages: n))
                let b = try m.apply(KernelOperation(name: "set_memory_encrypted", address: va, numpages: n))
                return a != "ok" ? a : b
            }
        },
        WorkloadDefinition(
            name: "split-scatter",
            summary: "set_memory_4k on random RAM pages: direct-map fragmentation that is never undone",
            parameters: Array(common.prefix(2))
        ) { m, a throws(HostKernelError) in
            try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                try m.apply(KernelOperation(name: "set_memory_4k", address: m.kernel.va(a.range.randomPage(&m)).rawValue, numpages: 1))
            }
        },
        WorkloadDefinition(
            name: "rox-cycle",
            summary: "set_memory_ro on one random page, then set_memory_rox on its whole 2M region (execmem-style: collapses under cpa-collapse rox)",
            parameters: Array(common.prefix(2))
        ) { m, a throws(HostKernelError) in
            try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                let pa = a.range.randomPage(&m).rawValue
                let region = pa & ~(PageSize.size2M.bytes - 1)
                guard m.kernel.memory.isRAM(region..<region + PageSize.size2M.bytes) else { return "ok" }
                let a = try m.apply(KernelOperation(name: "set_memory_ro", address: m.kernel.va(PhysAddr(pa)).rawValue, numpages: 1))
                let b = try m.apply(KernelOperation(name: "set_memory_rox", address: m.kernel.va(PhysAddr(region)).rawValue, numpages: 512))
                return a != "ok" ? a : b
            }
        },
    ] + snp

    static let guestParameters: [(String, String)] = [("guest", "the guest (x86-snp)"), ("operations", "how many conversions (default 1)")]

    static let snp: [WorkloadDefinition] = [
        WorkloadDefinition(
            name: "guest-boot",
            summary: "launch (context and VMSA pages), then the guest accepts all its memory in 2M units; KVM prepares guest_memfd pages on fault",
            parameters: [("guest", "the guest (x86-snp)")], needsGuest: true
        ) { m, a throws(HostKernelError) in
            let r = m.guestBoot(m.guestIndex(a.guest!))
            return r == "ok" ? (0, nil) : (1, r)
        },
        WorkloadDefinition(
            name: "adversarial-flip",
            summary: "the guest flips random 4K pages between private and shared (set_memory_decrypted/encrypted), forcing PSMASH and host splits",
            parameters: guestParameters, needsGuest: true
        ) { m, a throws(HostKernelError) in
            let i = m.guestIndex(a.guest!)
            return try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                let gfn = m.rng.below(a.guest!.memory >> pageShift)
                return m.pageStateChange(guest: i, gfn: gfn, toPrivate: !m.isPrivate(guest: i, gfn: gfn))
            }
        },
        WorkloadDefinition(
            name: "swiotlb-churn",
            summary: "bounce buffers of numpages pages made shared and private again, as swiotlb-style I/O does",
            parameters: guestParameters + [("numpages", "pages per buffer (default 1)")], needsGuest: true
        ) { m, a throws(HostKernelError) in
            let i = m.guestIndex(a.guest!)
            return try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                let pages = a.guest!.memory >> pageShift
                let n = UInt64(min(a.numpages, Int(pages)))
                let first = m.rng.below(pages - n + 1)
                let r = m.guestSetShared(i, gfns: first..<first + n)
                return r == "ok" ? m.guestSetPrivate(i, gfns: first..<first + n) : r
            }
        },
        WorkloadDefinition(
            name: "vm-churn",
            summary: "the VM is destroyed (memory, VMSAs and the context page back to the hypervisor), created and booted again",
            parameters: guestParameters, needsGuest: true
        ) { m, a throws(HostKernelError) in
            let i = m.guestIndex(a.guest!)
            return try repeatOps(&m, a.operations) { m throws(HostKernelError) in
                let down = m.guestRecreate(i)
                return down == "ok" ? m.guestBoot(i) : down
            }
        },
        WorkloadDefinition(
            name: "host-writes",
            summary: "the host writes random hypervisor-owned RAM pages in one context (kernel data, stacks …); counts how those writes end",
            parameters: [("operations", "how many writes (default 1)"), ("from", "lowest physical address (default 1M)"),
                         ("context", "host access context (default data)")]
        ) { m, a throws(HostKernelError) in
            guard m.rmp != nil else { return (0, nil) }
            for i in 0..<a.operations {
                // The host's own pages: skip pages the RMP gives to a guest or the firmware.
                var pa = a.range.randomPage(&m).rawValue
                while m.rmp![pa >> pageShift].assigned { pa = a.range.randomPage(&m).rawValue }
                let outcome = m.kernel.hostAccess(m.rmp!, pa: pa, write: true, context: a.context)
                m.operations += 1
                if case .fault(let cause, _) = outcome, cause == "RMP" { m.faults.hostRMP += 1 }
                if i & 4095 == 4095 { m.onProgress?(i + 1, a.operations) }
            }
            return (0, nil)
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

    static func prepare(_ args: Field, index: Int, line: Int?, expect: String?, context: StepContext) throws(ScenarioError) -> PreparedStep {
        let kernel = context.kernel
        let fields = try args.mapping()
        let kindField = try fields.required("kind")
        let kind = try kindField.choice(all.map(\.name), what: "workload")
        let def = all.first { $0.name == kind }!
        try fields.only(["kind"] + def.parameters.map(\.name))
        let ops = try fields["operations"]?.number(in: 1...1_000_000_000_000, what: "operations") ?? 1
        var guest: GuestSpec?
        if def.needsGuest {
            guard context.architecture == .x86_snp else {
                throw kindField.error("workload \(kind) drives a guest and needs 'arch: x86-snp'")
            }
            guest = try context.guest(fields).spec
        }
        let hostContext = HostAccessContext(rawValue: try fields["context"]?.choice(Steps.hostContexts, what: "context") ?? "data")!
        let floor = try fields["from"]?.number() ?? Kernel.isaEnd
        let pages = kernel.memory.ramPages(above: floor)
        guard pages > 0 else { throw (fields["from"] ?? args).error("no RAM at or above \(hex(floor))") }
        let numpages = Int(try fields["numpages"]?.number(in: 1...512, what: "numpages") ?? 1)
        let range = WorkloadRange(floor: floor, pages: pages)
        let workloadArgs = WorkloadArgs(range: range, operations: ops, numpages: numpages, guest: guest, context: hostContext)
        var shown: [(String, String)] = [("kind", kind), ("operations", "\(ops)")]
        if let guest { shown.append(("guest", guest.name)) }
        if fields["context"] != nil { shown.append(("context", hostContext.rawValue)) }
        if fields["from"] != nil { shown.append(("from", hex(floor))) }
        if fields["numpages"] != nil { shown.append(("numpages", "\(numpages)")) }
        return PreparedStep(index: index, line: line, name: "workload", arguments: shown, expect: expect) { m throws(HostKernelError) in
            let (errors, first) = try def.body(&m, workloadArgs)
            return errors == 0 ? "ok" : "\(errors) of \(ops) failed (first \(first!))"
        }
    }
}
