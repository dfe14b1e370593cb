import HostKernel

/// A choice point in the model that scenarios name and `cocomem compare` varies. Its full
/// name is `SECTION.KEY`, where SECTION is the scenario section it is written in: `host`
/// (the host kernel), `kvm` (the hypervisor), `guest` (every guest's kernel) or `machine`
/// (hardware options).
public struct PolicySlot: Sendable {
    public enum Section: String, CaseIterable, Sendable { case host, kvm, guest, machine }

    public let section: Section
    /// The key under its section (`host: {cpa-collapse: rox}`).
    public let key: String
    public let summary: String
    /// Its policies, as they are now (an embedding program may register more).
    public var policies: [(name: String, summary: String)] { listPolicies() }
    let listPolicies: @Sendable () -> [(name: String, summary: String)]
    public let defaultPolicy: String
    let apply: @Sendable (String, inout PolicyTargets) -> Void

    /// `section.key`, e.g. `host.cpa-collapse`.
    public var name: String { "\(section.rawValue).\(key)" }

    /// A slot whose policies are read each time (a registry an embedding program adds to).
    public init(section: Section, key: String, summary: String, dynamicPolicies: @escaping @Sendable () -> [(name: String, summary: String)],
                defaultPolicy: String, apply: @escaping @Sendable (String, inout PolicyTargets) -> Void) {
        self.section = section
        self.key = key
        self.summary = summary
        self.listPolicies = dynamicPolicies
        self.defaultPolicy = defaultPolicy
        self.apply = apply
    }

    public init(section: Section, key: String, summary: String, policies: [(name: String, summary: String)], defaultPolicy: String,
                apply: @escaping @Sendable (String, inout PolicyTargets) -> Void) {
        self.section = section
        self.key = key
        self.summary = summary
        self.listPolicies = { policies }
        self.defaultPolicy = defaultPolicy
        self.apply = apply
    }
}

/// What a policy sets: the host kernel's configuration and every guest kernel's (a guest
/// entry's own choices are applied to its copy).
public struct PolicyTargets: Sendable {
    public var host: KernelConfig
    public var guest: KernelConfig

    /// A guest kernel as an SEV guest boots: PAGE_KERNEL with the C-bit, coherent caches.
    public static let guestDefault = KernelConfig(memEncrypt: true, smeCoherent: true)
}

/// The registry of policy slots: those every machine has; architectures add theirs.
public enum Policies {
    /// The x86 host kernel's (change_page_attr's collapse).
    public static let common: [PolicySlot] = [
        collapse(.host, "when change_page_attr re-merges split direct-map tables") { $0.host.collapse = $1 },
    ]

    /// The slots every machine with guests has: the guest kernels' own.
    public static let guest: [PolicySlot] = [
        collapse(.guest, "when a guest kernel's change_page_attr re-merges its split direct-map tables (a guest entry may choose its own)") {
            $0.guest.collapse = $1
        },
    ]

    /// The user-mapping code's slots (docs/user-mappings.md), which an architecture with
    /// user processes registers.
    public static let userMappings: [PolicySlot] = [
        chgMask(.host, "the encryption bit in the host kernel's _PAGE_CHG_MASK (mprotect and pgprot_modify keep it or not)") { $0.host.user.chgMask = $1 },
        PolicySlot(section: .host, key: "ttm-insert", summary: "how TTM gives a buffer object's pages their own protection",
                   policies: TTMInsert.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: TTMInsert.protInsert.rawValue,
                   apply: { name, t in t.host.user.ttmInsert = TTMInsert(rawValue: name)! }),
        PolicySlot(section: .host, key: "inaccessible-check", summary: "where the kernel stops memory the hardware keeps from it (seed 002's argument)",
                   policies: InaccessibleCheck.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: InaccessibleCheck.gupAndWriteback.rawValue,
                   apply: { name, t in t.host.user.inaccessibleCheck = InaccessibleCheck(rawValue: name)! }),
        PolicySlot(section: .host, key: "debug-vm", summary: "CONFIG_DEBUG_VM: whether a VM_BUG_ON is a BUG",
                   policies: [("false", "VM_BUG_ON compiles to nothing (distribution kernels)"), ("true", "VM_BUG_ON is BUG_ON: the kernel oopses")],
                   defaultPolicy: "false", apply: { name, t in t.host.user.debugVM = name == "true" }),
        chgMask(.guest, "the encryption bit in the guest kernels' _PAGE_CHG_MASK (a guest entry may choose its own)") { $0.guest.user.chgMask = $1 },
    ]

    /// A `pgprot-chg-mask` slot of `section`.
    static func chgMask(_ section: PolicySlot.Section, _ summary: String,
                        _ set: @escaping @Sendable (inout PolicyTargets, PgprotChgMask) -> Void) -> PolicySlot {
        PolicySlot(section: section, key: "pgprot-chg-mask", summary: summary,
                   policies: PgprotChgMask.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: PgprotChgMask.cc.rawValue,
                   apply: { name, t in set(&t, PgprotChgMask(rawValue: name)!) })
    }

    /// A `cpa-collapse` slot of `section`, setting the collapse policy where `set` puts it.
    static func collapse(_ section: PolicySlot.Section, _ summary: String,
                         _ set: @escaping @Sendable (inout PolicyTargets, CollapsePolicy) -> Void) -> PolicySlot {
        PolicySlot(section: section, key: "cpa-collapse", summary: summary,
                   policies: CollapsePolicy.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: CollapsePolicy.rox.rawValue,
                   apply: { name, t in set(&t, CollapsePolicy(rawValue: name)!) })
    }

    /// The slots a machine of `architecture` has.
    public static func slots(_ architecture: ArchitectureDefinition) -> [PolicySlot] {
        (architecture.isa == .x86_64 ? common : []) + (architecture.guestIDs == nil || !architecture.guestKernels ? [] : guest) + architecture.policySlots
    }

    /// Every slot of every architecture, each once, for `list policies`.
    public static var all: [PolicySlot] {
        var out = common + guest
        for a in Architectures.all { for s in a.policySlots where !out.contains(where: { $0.name == s.name }) { out.append(s) } }
        return out
    }

    /// The slots that hold a policy named `policy`.
    public static func slots(holding policy: String) -> [PolicySlot] {
        all.filter { $0.policies.contains { $0.name == policy } }
    }
}
