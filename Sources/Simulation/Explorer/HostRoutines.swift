import Hardware
import HostKernel
import PageTables

/// The x86 host kernel's routines a thread runs as their atomic actions (x86-64 and the x86
/// hosts of its platforms).
enum HostThreadRoutines {
    static let x86: [ThreadRoutineDefinition] = [
        ThreadRoutineDefinition(
            "split_large_page",
            "split the large direct-map leaf that maps pa into a table one level down, one action per write and flush",
            [Parameter("pa", .physical, required: true, "a physical address the leaf maps (through the direct map)"),
             Parameter("order", .choice(["linux", "clear-first"]), default: "linux",
                       "linux: fill, install with one store, flush_tlb_all (__split_large_page); clear-first: the entry cleared and flushed before the table goes in")]
        ) { a, ctx throws(ScenarioError) in
            let pa = a.number("pa")
            guard ctx.kernel.hasDirectMapAddress(pa) else {
                throw a.field("pa").error("physical address \(hex(pa)) has no direct-map address")
            }
            let va = ctx.kernel.va(PhysAddr(pa)).rawValue
            guard let leaf = ctx.kernel.pageTable.lookup(VirtAddr(va)), leaf.size != .size4K else {
                throw a.field("pa").error("\(hex(pa)) is mapped by a 4K page at boot: there is no large leaf to split")
            }
            let steps: [SplitStep] = a.text("order") == "linux" ? [.fill, .install, .flush] : [.fill, .clear, .flush, .installAfterClear]
            return steps.map { step in ThreadAction(step.label) { m in (m.kernel.splitStep(step, address: va), false) } }
        },
    ]
}
