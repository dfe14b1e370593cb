import HostKernel

/// The arm64 host: the kernel's linear map as map_mem builds it (blocks, pages, or BBML2
/// splits), arm64's set_memory_* and set_direct_map_* (pageattr.c), TLBI broadcast, and the
/// host accesses and workloads every host has. No ownership table yet (pKVM, CCA and MTE
/// build on this).
public enum Arm64Architecture {
    public static let definition = ArchitectureDefinition(
        name: "arm64", summary: "arm64 host: linear map (blocks, pages, BBML2 splits), set_memory_*/set_direct_map_*, TLBI",
        isa: .arm64, policySlots: [linearMap])

    /// `host.arm64-linear-map`: how map_mem maps the linear map.
    static let linearMap = PolicySlot(
        section: .host, key: "arm64-linear-map",
        summary: "how the arm64 linear map is mapped at boot (can_set_direct_map(), BBML2_NOABORT); arch/arm64/mm/mmu.c map_mem",
        policies: Arm64LinearMap.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: Arm64LinearMap.blocks.rawValue
    ) { name, targets in targets.host.linearMap = Arm64LinearMap(rawValue: name)! }
}
