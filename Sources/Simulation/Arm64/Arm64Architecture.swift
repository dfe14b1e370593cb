import Hardware
import HostKernel
import PageTables

/// The arm64 host: the kernel's linear map as map_mem builds it (blocks, pages, or BBML2
/// splits), arm64's set_memory_* and set_direct_map_* (pageattr.c), TLBI broadcast, and the
/// host accesses and workloads every host has. No ownership table yet (pKVM, CCA and MTE
/// build on this).
public enum Arm64Architecture {
    public static let definition = ArchitectureDefinition(
        name: "arm64", summary: "arm64 host: linear map (blocks, pages, BBML2 splits), set_memory_*/set_direct_map_*, TLBI",
        isa: .arm64, steps: [tlbi] + MTESteps.all, workloads: MTEWorkloads.all, policySlots: [linearMap, MTESteps.syncSlot])

    /// `tlbi`: one TLB maintenance instruction on a CPU, as the kernel's flush helpers issue
    /// them (flush_tlb_kernel_range: VAALE1IS; flush_tlb_all: VMALLE1IS; flush_tlb_mm:
    /// ASIDE1IS; local_flush_tlb_all: VMALLE1).
    static let tlbi = StepDefinition(
        "tlbi", "a TLBI instruction on a CPU: by VA, by ASID or all; the IS forms reach every CPU, the others only this one",
        [Parameter("op", .choice(ArmTLBI.allCases.map(\.rawValue)), required: true, "the instruction"),
         Parameter("addr", .address(), "the virtual address (for the VA forms), or 'pa:' a linear-map page"),
         Steps.cpuArgument], extraKeys: ["pa"]
    ) { a, ctx throws(ScenarioError) in
        try Steps.checkCPU(a, ctx)
        let op = ArmTLBI(rawValue: a.text("op")!)!, cpu = Int(a.number("cpu"))
        var va: UInt64 = 0
        if op.byAddress {
            va = try Steps.hostAddress(a, kernel: ctx.kernel)
            a.show("addr", hex(va))
        } else if a.has("addr") || a.has("pa") {
            throw a.field(a.has("addr") ? "addr" : "pa").error("TLBI \(op.rawValue) takes no address")
        }
        let address = va
        return { m throws(HostKernelError) in
            m.kernel.tlbi(op, va: address, cpu: cpu)
            m.counters.operations += 1
            return OK()
        }
    }

    /// `host.arm64-linear-map`: how map_mem maps the linear map.
    static let linearMap = PolicySlot(
        section: .host, key: "arm64-linear-map",
        summary: "how the arm64 linear map is mapped at boot (can_set_direct_map(), BBML2_NOABORT); arch/arm64/mm/mmu.c map_mem",
        policies: Arm64LinearMap.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: Arm64LinearMap.blocks.rawValue
    ) { name, targets in targets.host.linearMap = Arm64LinearMap(rawValue: name)! }
}
