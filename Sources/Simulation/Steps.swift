import Hardware
import HostKernel
import PageTables

/// A scenario step: an operation under its real name (kernel and specification spelling;
/// model-only actions lowercase with hyphens), with its arguments declared once.
public struct StepDefinition: Sendable {
    public let name: String
    /// Older names that still work.
    public let aliases: [StepAlias]
    public let summary: String
    public let arguments: [Parameter]
    /// Fields accepted besides the schema's (the `pa` alternative to `addr`).
    let extraKeys: [String]
    let prepare: @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> StepAction

    /// Whether `other` is this same step (one definition registered by several architectures).
    public func same(as other: StepDefinition) -> Bool { name == other.name && summary == other.summary }

    public init(_ name: String, aliases: [StepAlias] = [], _ summary: String, _ arguments: [Parameter], extraKeys: [String] = [],
                prepare: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> StepAction) {
        self.name = name
        self.aliases = aliases
        self.summary = summary
        self.arguments = arguments
        self.extraKeys = extraKeys
        self.prepare = prepare
    }

    /// Whether `name` calls this step, by its name or an alias.
    func isCalled(_ name: String) -> Bool { self.name == name || aliases.contains { $0.name == name } }

    /// Reads a step's arguments, called as `name`, and makes it ready to run: (arguments to
    /// echo, action).
    func prepared(_ field: Field, _ context: StepContext, calledAs name: String) throws(ScenarioError) -> ([(String, String)], StepAction) {
        var args = try StepArguments(field, schema: arguments, context: context, extraKeys: extraKeys)
        if let alias = aliases.first(where: { $0.name == name }) {
            for key in alias.requires where !args.has(key) {
                throw args.fields.owner.error("\(name) needs '\(key)' (it is \(alias.meaning))")
            }
        }
        let action = try prepare(&args, context)
        return (args.echoed, action)
    }
}

/// An older name of a step, with the fields it cannot do without and what it means.
public struct StepAlias: Sendable {
    public let name: String
    public let requires: [String]
    public let meaning: String
}

/// What a step does when it runs: the machine changes and the step answers.
public typealias StepAction = @Sendable (inout Machine) throws(HostKernelError) -> any Outcome

/// What a step can check its arguments against while the scenario is read: the booted
/// kernel, the architecture and the guests.
public struct StepContext: Sendable {
    public let kernel: Kernel
    public let architecture: ArchitectureDefinition
    public let guests: [GuestSpec]
    public let cpus: Int
    /// The scenario's user processes.
    public var processes: [ProcessSpec] = []
}

/// The registry of steps: the host kernel's, which every machine has, and each
/// architecture's.
public enum Steps {
    /// The host kernel's steps on an x86-64 kernel: its set_memory_* family, flushes, fault
    /// injection and host accesses.
    public static let hostX86 = kernelSteps(KernelOperation.catalogue) + faultInjection + [failEncStatusChange] + hostAccess
    /// The host kernel's steps on an arm64 kernel.
    public static let hostArm64 = kernelSteps(KernelOperation.arm64Catalogue) + faultInjection + hostAccess

    /// The host kernel's steps for a kernel of `isa`.
    public static func host(_ isa: KernelISA) -> [StepDefinition] {
        switch isa {
        case .x86_64: hostX86
        case .arm64: hostArm64
        case .s390x: hostAccess  // the model keeps no s390 DAT tables: no set_memory_*
        }
    }

    static let hostAccess = [hostAccessStep("host-read", write: false), hostAccessStep("host-write", write: true)]

    /// One step per kernel operation, by its arguments.
    static func kernelSteps(_ catalogue: [(name: String, arguments: String, summary: String)]) -> [StepDefinition] {
        catalogue.map { op in
            switch op.arguments {
            case "PA NUMPAGES": vmapStep(summary: op.summary)
            case "": StepDefinition(op.name, op.summary, []) { _, _ throws(ScenarioError) in
                let kernelOp = KernelOperation(name: op.name, address: 0, numpages: 0)
                return { m throws(HostKernelError) in try m.apply(kernelOp) }
            }
            default: cpaStep(op.name, summary: op.summary, single: op.arguments == "ADDR", enable: op.arguments.hasSuffix("ENABLE"))
            }
        }
    }

    /// A step on an architecture's platform `P`, counted as an operation.
    static func platformStep<P: Platform>(
        _ type: P.Type, _ name: String, _ summary: String, _ arguments: [Parameter], extraKeys: [String] = [],
        _ body: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout P, inout Machine) -> any Outcome
    ) -> StepDefinition {
        StepDefinition(name, summary, arguments, extraKeys: extraKeys) { a, ctx throws(ScenarioError) in
            let run = try body(&a, ctx)
            return { m throws(HostKernelError) in
                let result = m.withPlatform(P.self) { p, m in run(&p, &m) }
                m.count(result)
                return result
            }
        }
    }

    /// The steps a machine of `architecture` has.
    public static func available(_ architecture: ArchitectureDefinition) -> [StepDefinition] { host(architecture.isa) + architecture.steps }

    /// Every step of every architecture, each definition once, for `list steps` and the
    /// docs (two architectures may each have their own step of one name: `guest-read`).
    public static var all: [StepDefinition] {
        var out: [StepDefinition] = []
        for s in hostX86 + hostArm64 + Architectures.all.flatMap(\.steps) where !out.contains(where: { $0.same(as: s) }) { out.append(s) }
        return out
    }

    /// The step called `name` (or an alias) on `architecture`, or an error that says which
    /// architecture has it or which names are close.
    static func find(_ name: String, architecture: ArchitectureDefinition, at fields: Fields) throws(ScenarioError) -> StepDefinition {
        if let def = available(architecture).first(where: { $0.isCalled(name) }) { return def }
        let owners = Architectures.all.filter { a in (a.modelled ? available(a) : a.steps).contains { $0.isCalled(name) } }
        if !owners.isEmpty {
            throw fields.keyError(name, "step '\(name)' needs " + owners.map { "'arch: \($0.name)'" }.joined(separator: " or ")
                + "; this machine is \(architecture.name)")
        }
        let names = available(architecture).map(\.name) + ["workload"]
        throw fields.keyError(name, "unknown step '\(name)'" + Suggest.hint(name, in: names, listedBy: "'cocomem list steps'"))
    }

    static let faultInjection: [StepDefinition] = [
        faultSwitch("fail_page_alloc", "fault injection: make page-table allocations fail (or succeed again)",
                    "whether allocations fail", \.failPageTableAllocations),
        faultSwitch("fail_tlb_flush", "fault injection: the kernel leaves out its TLB flushes (a missing flush), or flushes again",
                    "whether flushes are left out", \.omitTLBFlushes),
    ]

    /// A fault-injection step that turns one of the kernel's switches on or off (`enabled:`).
    static func faultSwitch(_ name: String, _ summary: String, _ help: String,
                            _ flag: WritableKeyPath<Kernel, Bool> & Sendable) -> StepDefinition {
        StepDefinition(name, summary, [Parameter("enabled", .bool, required: true, help)]) { a, _ throws(ScenarioError) in
            let on = a.bool("enabled")
            return { m throws(HostKernelError) in
                m.kernel[keyPath: flag] = on
                return OK()
            }
        }
    }

    static let failEncStatusChange =
        StepDefinition("fail_enc_status_change", "fault injection: make an encryption-status hook fail (-EIO)",
                       [Parameter("hook", .choice(EncryptionHook.allCases.map(\.rawValue) + ["none"]), required: true, "the hook that fails")]) { a, _ throws(ScenarioError) in
            let hook = EncryptionHook(rawValue: a.text("hook")!)
            return { m throws(HostKernelError) in
                m.kernel.failingHook = hook
                return OK()
            }
        }

    /// Host access contexts, in HostAccessContext's order.
    public static let hostContexts = HostAccessContext.allCases.map(\.rawValue)

    /// Access steps take `cpu:` from the start, so per-CPU state can follow unchanged.
    static let cpuArgument = Parameter("cpu", .count(0...4095), default: "0", "the CPU that makes the access")

    /// The `cpu:` argument, which must name one of the machine's CPUs.
    static func checkCPU(_ a: StepArguments, _ ctx: StepContext) throws(ScenarioError) {
        let cpu = a.number("cpu")
        guard cpu < UInt64(ctx.cpus) else {
            throw a.field("cpu").error("cpu \(cpu) is past the machine's \(ctx.cpus) CPU\(ctx.cpus == 1 ? "" : "s") (valid: 0 to \(ctx.cpus - 1))")
        }
    }

    /// host-read / host-write: a host kernel access through the direct map (or a user
    /// mapping), the platform's ownership check, and how a fault ends in its context.
    static func hostAccessStep(_ name: String, write: Bool) -> StepDefinition {
        StepDefinition(
            name,
            write ? "the host kernel writes a page; a fault (not present, or the ownership check) ends as its context decides (oops, double fault, …)"
                : "the host kernel reads a page: ownership-checked only as a page-table walk; a guest page still mapped reads as ciphertext",
            [Parameter("pa", .physical, required: true, "physical address"),
             Parameter("context", .choice(hostContexts), default: "data", "where the access comes from"), cpuArgument]
                + (write ? [Parameter("access", .choice(HostWriteKind.allCases.map(\.rawValue)), default: "cached", "how the store reaches memory: a cached line, or a partial MOVNTI or UC store (TDX's erratum tells them apart)")] : [])
        ) { a, ctx throws(ScenarioError) in
            let pa = a.number("pa"), context = HostAccessContext(rawValue: a.text("context")!)!
            try checkCPU(a, ctx)
            let cpu = Int(a.number("cpu")), kind = HostWriteKind(rawValue: a.text("access") ?? "cached") ?? .cached
            return { m throws(HostKernelError) in
                let outcome = m.platform.hostAccess(&m.kernel, pa: pa, write: write, context: context, cpu: cpu, kind: kind)
                m.count(outcome)
                return outcome
            }
        }
    }

    static func cpaStep(_ name: String, summary: String, single: Bool, enable: Bool = false) -> StepDefinition {
        var args = [Parameter("addr", .address(), "a direct-map or vmalloc virtual address (e.g. 0xffff888040000000), or 'pa:' a physical address reached through the direct map")]
        if !single { args.append(Parameter("numpages", .count(1...(1 << 40)), default: "1", "pages to change")) }
        if enable { args.append(Parameter("enable", .bool, default: "true", "set (true) or clear (false) the valid bit")) }
        args += [Parameter("guest", .guest, "run it in this guest's own kernel instead of the host's"),
                 Parameter("gpa", .address(), "with guest: the guest physical address, reached through the guest's direct map")]
        // The old guest_set_memory_{en,de}crypted steps always meant a guest's kernel.
        let aliases = name.hasPrefix("set_memory_") && name.hasSuffix("crypted")
            ? [StepAlias(name: "guest_" + name, requires: ["guest"], meaning: "\(name) in a guest's kernel")] : []
        return StepDefinition(name, aliases: aliases,
                              summary + " (with guest: in that guest's kernel)", args, extraKeys: ["pa"]) { a, ctx throws(ScenarioError) in
            let numpages = Int(a[number: "numpages"] ?? 1)
            if let (i, g) = a.guest {
                guard ctx.architecture.guestKernels else {
                    throw a.field("guest").error("\(ctx.architecture.name) guests have no kernel in the model (they are VMs the steps give pages to); \(name) runs in the host kernel here")
                }
                return try guestCPAStep(name, &a, guest: i, spec: g, numpages: numpages)
            }
            if a.has("gpa") { throw a.field("gpa").error("'gpa' goes with 'guest'; for the host give 'addr' or 'pa'") }
            let kernel = ctx.kernel
            let address = try hostAddress(a, kernel: kernel)
            do throws(HostKernelError) {
                try kernel.validate(address: address, numpages: numpages, function: name)
            } catch {
                throw (a.fields["addr"] ?? a.fields["pa"]!).error(error.message)
            }
            a.show("addr", hex(address))
            let op = KernelOperation(name: name, address: address, numpages: numpages, enable: !a.has("enable") || a.bool("enable"))
            return { m throws(HostKernelError) in try m.apply(op) }
        }
    }

    /// The address a host step names with `addr:` or `pa:`.
    static func hostAddress(_ a: StepArguments, kernel: Kernel) throws(ScenarioError) -> UInt64 {
        switch (a.fields["addr"], a.fields["pa"]) {
        case (.some, .none): return a.number("addr")
        case (.none, .some(let p)):
            let pa = try p.number()
            guard kernel.hasDirectMapAddress(pa) else {
                throw p.error("physical address \(hex(pa)) has no direct-map address (the direct map covers [\(hex(kernel.physOffset))-\(hex(kernel.physOffset + kernel.layout.directMapMax))))")
            }
            return kernel.va(PhysAddr(pa)).rawValue
        case (.some, .some): throw a.fields.owner.error("give either 'addr' or 'pa', not both")
        case (.none, .none): throw a.fields.owner.error("'addr' or 'pa' is required (or 'guest' and 'gpa')")
        }
    }

    /// A set_memory_* step in a guest's own kernel: set_memory_encrypted/decrypted run the
    /// architecture's conversion protocol; the others change the guest's direct map alone.
    static func guestCPAStep(_ name: String, _ a: inout StepArguments, guest i: Int, spec g: GuestSpec, numpages: Int) throws(ScenarioError) -> StepAction {
        let encDec = name == "set_memory_encrypted" || name == "set_memory_decrypted"
        if encDec, a.has("addr"), !a.has("gpa"), !a.has("pa") {
            // A virtual address of the guest's own kernel: where the platform has that path.
            let va = a.number("addr"), encrypt = name == "set_memory_encrypted"
            return { m throws(HostKernelError) in
                let platform = type(of: m.platform)
                let r = platform.guestSetMemory(&m, guest: i, va: va, numpages: numpages, encrypt: encrypt)
                    ?? KernelStatus.error(.EINVAL)
                m.counters.operations += 1
                return r
            }
        }
        guard !a.has("addr") && !a.has("pa") else { throw a.field(a.has("addr") ? "addr" : "pa").error("with 'guest', give 'gpa' (a guest physical address)") }
        guard a.has("gpa") else { throw a.fields.owner.error("with 'guest', 'gpa' is required") }
        let gpa = a.number("gpa")
        guard gpa & (pageBytes - 1) == 0, gpa <= g.memory, UInt64(numpages) <= (g.memory - gpa) / pageBytes else {
            throw a.field("gpa").error("\(hex(gpa)) + \(numpages) pages must be page-aligned and inside \(g.name)'s \(ByteSize.format(g.memory))")
        }
        let gfns = (gpa >> pageShift)..<((gpa >> pageShift) + UInt64(numpages))
        if name == "set_memory_encrypted" || name == "set_memory_decrypted" {
            let encrypt = name == "set_memory_encrypted"
            return { m throws(HostKernelError) in
                let platform = type(of: m.platform)  // no copy of the platform alive across the call (it would copy its tables)
                let r = platform.guestSetMemory(&m, guest: i, gfns: gfns, encrypt: encrypt)
                m.counters.operations += 1  // its PVALIDATEs and page-state changes counted their own errors
                return r
            }
        }
        return { m throws(HostKernelError) in
            let op = KernelOperation(name: name, address: m.guestKernels[i].va(gfn: gpa >> pageShift), numpages: numpages)
            let r = try m.guestKernels[i].apply(op)
            m.count(r)
            return r
        }
    }

    static func vmapStep(summary: String) -> StepDefinition {
        StepDefinition("vmap", summary + "; the result is the address",
                       [Parameter("pa", .address(), required: true, "first physical page"),
                        Parameter("numpages", .count(1...(1 << 30)), default: "1", "pages")]) { a, ctx throws(ScenarioError) in
            let kernel = ctx.kernel
            let pa = a.number("pa"), numpages = Int(a.number("numpages"))
            guard pa & (pageBytes - 1) == 0 else { throw a.field("pa").error("\(hex(pa)) is not page-aligned") }
            let range = try a.field("pa").range(pa, size: UInt64(numpages) * pageBytes)
            guard kernel.memory.isRAM(range) else {
                throw a.field("pa").error("[\(hex(pa))-\(hex(range.upperBound))) is not RAM; RAM is "
                    + kernel.memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
            }
            let op = KernelOperation(name: "vmap", address: pa, numpages: numpages)
            return { m throws(HostKernelError) in try m.apply(op) }
        }
    }
}
