import Hardware
import HostKernel
import PageTables

/// Turns a scenario document into a `Scenario`, checking every field as it goes.
struct ScenarioReader {
    let file: String
    let overrides: [(String, String)]

    static let topKeys = ["name", "seed", "machine", "host", "guests", "steps", "check"]
    static let machineKeys = ["arch", "e820", "memory", "cpus", "gbpages", "la57", "mem-encrypt", "sme-coherent"]

    func read(_ root: Field) throws(ScenarioError) -> Scenario {
        let top = try root.mapping()
        try top.only(Self.topKeys)
        let name = try top.required("name").text()
        let seed = try top["seed"]?.number() ?? 0
        let machine = try top.required("machine").mapping()
        try machine.only(Self.machineKeys)

        let archField = machine["arch"]
        let arch = Architecture(rawValue: try archField?.choice(Architecture.allCases.map(\.rawValue), what: "architecture") ?? "x86-64")!
        guard arch.modelled else {
            throw archField!.error("architecture '\(arch.rawValue)' is not modelled yet; modelled: "
                + Architecture.allCases.filter(\.modelled).map(\.rawValue).joined(separator: ", "))
        }
        let memory = try readMemory(machine)
        let cpus = Int(try machine["cpus"]?.number(in: 1...4096, what: "cpus") ?? 1)
        var config = KernelConfig(
            gbpages: try machine["gbpages"]?.bool() ?? true,
            la57: try machine["la57"]?.bool() ?? false,
            memEncrypt: try machine["mem-encrypt"]?.bool() ?? true,
            smeCoherent: try machine["sme-coherent"]?.bool() ?? true)
        let policies = try readPolicies(top["host"], config: &config)

        var guests: [GuestSpec] = []
        if let list = top["guests"] {
            if arch == .x86_snp {
                guests = try GuestSpec.readAll(list, memory: memory)
            } else if !(try list.sequence()).isEmpty {
                throw list.error("guests need an architecture with a guest layer (modelled: x86-snp); '\(arch.rawValue)' has none, so use 'guests: []'")
            }
        }

        // Boot once so steps can be checked against the real layout and memory.
        let kernel: Kernel
        do { kernel = try Kernel(memory: memory, config: config) } catch {
            throw (machine["memory"] ?? machine["e820"] ?? root).error(error.message)
        }
        let context = StepContext(kernel: kernel, architecture: arch, guests: guests)
        var steps: [PreparedStep] = []
        for (i, item) in try top.required("steps").sequence().enumerated() {
            steps.append(try readStep(item, index: i + 1, context: context))
        }
        var checks: [PreparedCheck] = []
        if let list = top["check"] {
            for item in try list.sequence() { checks.append(try Checks.prepare(item)) }
        }
        return Scenario(file: file, name: name, seed: seed, architecture: arch, cpus: cpus, memory: memory,
                        kernelConfig: config, guests: guests, policies: policies, steps: steps, checks: checks)
    }

    func readMemory(_ machine: Fields) throws(ScenarioError) -> PhysicalMemory {
        switch (machine["e820"], machine["memory"]) {
        case (.some(let e), .none):
            do { return try PhysicalMemory.parse(e820: try e.text()) } catch let error as MemoryMapError {
                // Point at the e820 line inside the block scalar (which starts on the next line).
                let line = error.line.flatMap { l in e.node.mark.map { $0.line + l } }
                throw ScenarioError(file: file, line: line ?? e.node.mark?.line, column: nil, field: e.path, error.message)
            } catch let error as ScenarioError { throw error } catch { throw e.error("\(error)") }
        case (.none, .some(let m)):
            let size = try m.number()
            do { return try PhysicalMemory.pc(size: size) } catch { throw m.error(error.message) }
        case (.some, .some): throw machine.owner.error("give either 'e820' or 'memory', not both")
        case (.none, .none): throw machine.owner.error("'e820' or 'memory' is required")
        }
    }

    func readPolicies(_ host: Field?, config: inout KernelConfig) throws(ScenarioError) -> [(slot: String, policy: String)] {
        var chosen: [String: String] = [:]
        if let host {
            let fields = try host.mapping()
            try fields.only(Policies.slots.map(\.key))
            for (key, field) in fields.entries {
                let slot = Policies.slots.first { $0.key == key }!
                chosen[slot.name] = try field.choice(slot.policies.map(\.name), what: "policy for \(slot.name)")
            }
        }
        for (slot, policy) in overrides { chosen[slot] = policy }
        var result: [(slot: String, policy: String)] = []
        for slot in Policies.slots {
            let policy = chosen[slot.name] ?? slot.defaultPolicy
            slot.apply(policy, &config)
            result.append((slot.name, policy))
        }
        return result
    }

    func readStep(_ item: Field, index: Int, context: StepContext) throws(ScenarioError) -> PreparedStep {
        let fields = try item.mapping()
        let keys = fields.entries.map(\.0).filter { $0 != "expect" }
        guard keys.count == 1, let name = keys.first, let args = fields[name] else {
            throw item.error("a step is one operation (plus an optional 'expect'); found \(keys.isEmpty ? "none" : keys.joined(separator: ", "))")
        }
        let expect = try fields["expect"]?.text()
        let line = item.node.mark?.line
        if name == "workload" {
            return try Workloads.prepare(args, index: index, line: line, expect: expect, context: context)
        }
        guard let def = Steps.all.first(where: { $0.name == name }) else {
            throw fields.keyError(name,
                "unknown step '\(name)'; known steps: " + (Steps.all.map(\.name) + ["workload"]).joined(separator: ", "))
        }
        let prepared = try def.prepare(args, context)
        return PreparedStep(index: index, line: line, name: name, arguments: prepared.arguments, expect: expect, action: prepared.action)
    }
}
