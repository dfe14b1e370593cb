import Hardware
import HostKernel
import PageTables

/// A scenario step: an operation under its lowercase real name, with documented arguments.
public struct StepDefinition: Sendable {
    public let name: String
    public let summary: String
    /// Argument names and what they mean, for `list steps` and docs/SCENARIOS.md.
    public let arguments: [(name: String, help: String)]
    let prepare: @Sendable (Field, StepContext) throws(ScenarioError) -> (arguments: [(String, String)], action: @Sendable (inout Machine) throws(HostKernelError) -> String)
}

/// What a step can check its arguments against while the scenario is read: the booted
/// kernel, the architecture and the guests.
public struct StepContext: Sendable {
    public let kernel: Kernel
    public let architecture: Architecture
    public let guests: [GuestSpec]

    /// The guest the `guest:` field names, with its index (KVM's VM number), or an error
    /// listing the guests there are.
    func guest(_ f: Fields) throws(ScenarioError) -> (index: Int, spec: GuestSpec) {
        let field = try f.required("guest")
        let name = try field.text()
        guard let i = guests.firstIndex(where: { $0.name == name }) else {
            throw field.error("unknown guest '\(name)'; guests: " + (guests.isEmpty ? "none defined" : guests.map(\.name).joined(separator: ", ")))
        }
        return (i, guests[i])
    }
}

/// The registry of steps.
public enum Steps {
    static let addressArguments: [(String, String)] = [
        ("addr", "a direct-map or vmalloc virtual address (e.g. 0xffff888040000000)"),
        ("pa", "instead of addr: a physical address, reached through the direct map"),
        ("numpages", "pages to change (default 1)"),
    ]

    public static let all: [StepDefinition] = KernelOperation.catalogue.map { op in
        op.name == "vmap" ? vmapStep(summary: op.summary) : cpaStep(op.name, summary: op.summary, single: op.arguments == "ADDR")
    } + faultInjection + snp

    static let faultInjection: [StepDefinition] = [
        StepDefinition(name: "fail_page_alloc", summary: "fault injection: make page-table allocations fail (or succeed again)",
                       arguments: [("enabled", "true or false")]) { args, _ throws(ScenarioError) in
            let fields = try args.mapping()
            try fields.only(["enabled"])
            let on = try fields.required("enabled").bool()
            return ([("enabled", "\(on)")], { m throws(HostKernelError) in
                m.kernel.failPageTableAllocations = on
                return "ok"
            })
        },
        StepDefinition(name: "fail_enc_status_change", summary: "fault injection: make an encryption-status hook fail (-EIO)",
                       arguments: [("hook", "prepare, finish or none")]) { args, _ throws(ScenarioError) in
            let fields = try args.mapping()
            try fields.only(["hook"])
            let hook = try fields.required("hook").choice(EncryptionHook.allCases.map(\.rawValue) + ["none"], what: "hook")
            return ([("hook", hook)], { m throws(HostKernelError) in
                m.kernel.failingHook = EncryptionHook(rawValue: hook)
                return "ok"
            })
        },
    ]

    /// The address a step names with `addr:` or `pa:`.
    static func address(_ fields: Fields, kernel: Kernel) throws(ScenarioError) -> UInt64 {
        switch (fields["addr"], fields["pa"]) {
        case (.some(let a), .none): return try a.number()
        case (.none, .some(let p)):
            let pa = try p.number()
            guard pa < kernel.layout.directMapMax else { throw p.error("physical address \(hex(pa)) is past the direct map") }
            return kernel.layout.pageOffset + pa
        case (.some, .some): throw fields.owner.error("give either 'addr' or 'pa', not both")
        case (.none, .none): throw fields.owner.error("'addr' or 'pa' is required")
        }
    }

    static func cpaStep(_ name: String, summary: String, single: Bool) -> StepDefinition {
        StepDefinition(name: name, summary: summary, arguments: single ? Array(addressArguments.prefix(2)) : addressArguments) { args, ctx throws(ScenarioError) in
            let kernel = ctx.kernel
            let fields = try args.mapping()
            try fields.only(single ? ["addr", "pa"] : ["addr", "pa", "numpages"])
            let address = try address(fields, kernel: kernel)
            let numpages = Int(try fields["numpages"]?.number(in: 1...(1 << 40), what: "numpages") ?? 1)
            do throws(HostKernelError) {
                try kernel.validate(address: address, numpages: numpages, function: name)
            } catch {
                throw (fields["addr"] ?? fields["pa"]!).error(error.message)
            }
            let op = KernelOperation(name: name, address: address, numpages: numpages)
            let shown: [(String, String)] = single ? [("addr", hex(address))] : [("addr", hex(address)), ("numpages", "\(numpages)")]
            return (shown, { m throws(HostKernelError) in try m.apply(op) })
        }
    }

    static func vmapStep(summary: String) -> StepDefinition {
        StepDefinition(name: "vmap", summary: summary + "; the result is the address",
                       arguments: [("pa", "first physical page"), ("numpages", "pages (default 1)")]) { args, ctx throws(ScenarioError) in
            let kernel = ctx.kernel
            let fields = try args.mapping()
            try fields.only(["pa", "numpages"])
            let paField = try fields.required("pa")
            let pa = try paField.number()
            let numpages = Int(try fields["numpages"]?.number(in: 1...(1 << 30), what: "numpages") ?? 1)
            guard pa & (pageBytes - 1) == 0 else { throw paField.error("\(hex(pa)) is not page-aligned") }
            guard kernel.memory.isRAM(pa..<pa + UInt64(numpages) * pageBytes) else {
                throw paField.error("[\(hex(pa))-\(hex(pa + UInt64(numpages) * pageBytes))) is not RAM; RAM is "
                    + kernel.memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
            }
            let op = KernelOperation(name: "vmap", address: pa, numpages: numpages)
            return ([("pa", hex(pa)), ("numpages", "\(numpages)")], { m throws(HostKernelError) in try m.apply(op) })
        }
    }
}
