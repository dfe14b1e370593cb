import HostKernel

/// A choice point in the model that scenarios name and `cocomem compare` varies.
public struct PolicySlot: Sendable {
    /// Full name, `layer.key` (e.g. `host.cpa-collapse`).
    public let name: String
    /// The key under its layer in a scenario (`host: {cpa-collapse: rox}`).
    public let key: String
    public let summary: String
    public let policies: [(name: String, summary: String)]
    public let defaultPolicy: String
    let apply: @Sendable (String, inout KernelConfig) -> Void
}

/// The registry of policy slots.
public enum Policies {
    public static let slots: [PolicySlot] = [
        PolicySlot(
            name: "host.cpa-collapse", key: "cpa-collapse",
            summary: "when change_page_attr re-merges split direct-map tables",
            policies: CollapsePolicy.allCases.map { ($0.rawValue, $0.summary) },
            defaultPolicy: CollapsePolicy.rox.rawValue,
            apply: { name, config in config.collapse = CollapsePolicy(rawValue: name)! }),
        PolicySlot(
            name: "host.directmap-policy", key: "directmap-policy",
            summary: "what the host does to its direct map as pages enter and leave the RMP (SEV-SNP)",
            policies: DirectMapPolicyKind.allCases.map { ($0.rawValue, $0.summary) },
            defaultPolicy: DirectMapPolicyKind.splitOnAssign.rawValue,
            apply: { name, config in config.directMapPolicy = DirectMapPolicyKind(rawValue: name)! }),
    ]

    /// The slot that holds a policy named `policy`, if exactly one does.
    public static func slots(holding policy: String) -> [PolicySlot] {
        slots.filter { $0.policies.contains { $0.name == policy } }
    }
}
