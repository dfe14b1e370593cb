import Hardware
import HostKernel
import PageTables

/// Turns a scenario document into a `Scenario`, checking every field as it goes.
struct ScenarioReader {
    let file: String
    let overrides: [(String, String)]

    static let topKeys = ["name", "seed", "machine", "host", "kvm", "guest", "guests", "processes", "steps", "check", "threads", "assert", "schedule"]
    /// The keys every machine has; the rest belong to one kernel architecture.
    static let commonMachineKeys = ["arch", "e820", "memory", "cpus"]
    static let machineKeys = commonMachineKeys + ArchitectureDefinition.x86MachineKeys

    func read(_ root: Field) throws(ScenarioError) -> Scenario {
        let top = try root.mapping()
        try top.only(Self.topKeys)
        let name = try top.required("name").text()
        let seed = try top["seed"]?.number() ?? 0
        let machineField = try top.required("machine")
        let machine = try machineField.mapping()

        let archField = machine["arch"]
        let archName = try archField?.text() ?? "x86-64"
        guard let arch = Architectures.named(archName) else {
            throw archField!.error("unknown architecture '\(archName)'" + Suggest.hint(archName, in: Architectures.all.map(\.name), listedBy: "'cocomem list archs'"))
        }
        if arch.name == "arm64-mte" {
            throw archField!.error("MTE is a capability of an arm64 machine, not an architecture: write 'arch: arm64' and 'mte: true' under machine")
        }
        guard arch.modelled else {
            throw archField!.error("architecture '\(arch.name)' is not modelled yet; modelled: " + Architectures.modelled.map(\.name).joined(separator: ", "))
        }
        let slots = Policies.slots(arch)
        for key in ArchitectureDefinition.x86MachineKeys where !arch.machineKeys.contains(key) && machine[key] != nil {
            throw machine.keyError(key, "'\(key)' is an x86 machine setting; this machine is \(arch.name)")
        }
        for key in ArchitectureDefinition.arm64MachineKeys where !arch.machineKeys.contains(key) && machine[key] != nil {
            throw machine.keyError(key, "'\(key)' is an arm64 machine setting; this machine is \(arch.name)")
        }
        try machine.only(Self.commonMachineKeys + arch.machineKeys + slots.filter { $0.section == .machine }.map(\.key))
        let memory = try readMemory(machine)
        let cpus = Int(try machine["cpus"]?.number(in: 1...4096, what: "cpus") ?? 1)
        var config = KernelConfig(
            gbpages: try machine["gbpages"]?.bool() ?? true,
            la57: try machine["la57"]?.bool() ?? false,
            memEncrypt: try machine["mem-encrypt"]?.bool() ?? true,
            smeCoherent: try machine["sme-coherent"]?.bool() ?? true,
            cpus: cpus)
        config.isa = arch.isa
        config.mte = try machine["mte"]?.bool() ?? false
        if let f = machine["mte-restore-steps"] {
            let n = try f.number(in: 1...256, what: "mte-restore-steps")
            guard n & (n - 1) == 0 else { throw f.error("mte-restore-steps \(n) must be a power of two from 1 to 256 (the page's 256 granules in equal parts)") }
            guard config.mte else { throw f.error("mte-restore-steps needs 'mte: true'") }
            config.mteRestoreSteps = Int(n)
        }
        var targets = PolicyTargets(host: config, guest: PolicyTargets.guestDefault)
        let policies = try readPolicies(top, machine: machine, slots: slots, targets: &targets)
        config = targets.host

        var guests: [GuestSpec] = []
        if let list = top["guests"] {
            if let ids = arch.guestIDs {
                guests = arch.guestKernels
                    ? try GuestSpec.readAll(list, memory: memory, ids: ids, guestSlots: slots.filter { $0.section == .guest }, targets: targets)
                    : try GuestSpec.readVMs(list, ids: ids, keys: arch.vmKeys, targets: targets)
            } else if !(try list.sequence()).isEmpty {
                throw list.error("guests need an architecture with guests (modelled: "
                    + Architectures.modelled.filter { $0.guestIDs != nil }.map(\.name).joined(separator: ", ")
                    + "); '\(arch.name)' has none, so use 'guests: []'")
            }
        }

        if let conflict = arch.checkMachine(config, memory, guests) {
            let slotField = conflict.slot.flatMap { name -> Field? in
                let parts = name.split(separator: ".", maxSplits: 1).map(String.init)
                return (try? top[parts[0]]?.mapping())??[parts[1]]
            }
            let fallback = conflict.slot?.hasPrefix("machine.") == true ? machine["e820"] ?? machineField : top["guests"] ?? machineField
            throw (slotField ?? fallback).error(conflict.message)
        }
        // Boot once so steps can be checked against the real layout and memory.
        let kernel: Kernel
        do { kernel = try Kernel(memory: memory, config: config) } catch {
            throw (machine["memory"] ?? machine["e820"] ?? root).error(error.message)
        }
        let processes = try ProcessSpec.readAll(top["processes"], architecture: arch, guests: guests)
        let context = StepContext(kernel: kernel, architecture: arch, guests: guests, cpus: cpus, processes: processes)
        var steps: [PreparedStep] = []
        for (i, item) in try top.required("steps").sequence().enumerated() {
            steps.append(try readStep(item, index: i + 1, context: context))
        }
        var checks: [PreparedCheck] = []
        if let list = top["check"] {
            for item in try list.sequence() { checks.append(try Checks.prepare(item, architecture: arch, cpus: cpus, mte: config.mte)) }
        }
        let (threads, threadNames) = try readThreads(top, context: context)
        var asserts: [PreparedCheck] = []
        if let list = top["assert"] {
            guard !threads.isEmpty else { throw list.error("'assert:' holds at every state of the threads' interleavings; this scenario has no 'threads:'") }
            for item in try list.sequence() { asserts.append(try Checks.prepare(item, architecture: arch, cpus: cpus, mte: config.mte)) }
        }
        var scenario = Scenario(file: file, name: name, seed: seed, architecture: arch, cpus: cpus, memory: memory,
                                kernelConfig: config, guests: guests, policies: policies, steps: steps, checks: checks)
        scenario.processes = processes
        scenario.threads = threads
        scenario.threadNames = threadNames
        scenario.asserts = asserts
        scenario.schedule = try readSchedule(top, threads: threads.count)
        return scenario
    }

    func readMemory(_ machine: Fields) throws(ScenarioError) -> PhysicalMemory {
        switch (machine["e820"], machine["memory"]) {
        case (.some(let e), .none):
            do { return try PhysicalMemory.parse(e820: try e.text()) } catch let error as MemoryMapError {
                // A block scalar (| or >) starts on the line after its indicator, so its line l
                // is the file's mark + l; a quoted or plain scalar's lines cannot be mapped one
                // to one (escapes, folding), so the error names the scalar's own line.
                let block = e.node.scalar.map { $0.style == .literal || $0.style == .folded } ?? false
                let line = block ? error.line.flatMap { l in e.node.mark.map { $0.line + l } } : nil
                throw ScenarioError(file: file, line: line ?? e.node.mark?.line, column: nil, field: e.path, error.message)
            } catch let error as ScenarioError { throw error } catch { throw e.error("\(error)") }
        case (.none, .some(let m)):
            let size = try m.number()
            do { return try PhysicalMemory.pc(size: size) } catch { throw m.error(error.message) }
        case (.some, .some): throw machine.owner.error("give either 'e820' or 'memory', not both")
        case (.none, .none): throw machine.owner.error("'e820' or 'memory' is required")
        }
    }

    /// Reads the policy slots from their sections (`host:`, `kvm:`, `guest:`, and the
    /// hardware options under `machine:`), applies `overrides`, then every slot's choice.
    func readPolicies(_ top: Fields, machine: Fields, slots: [PolicySlot], targets: inout PolicyTargets) throws(ScenarioError) -> [(slot: String, policy: String)] {
        var chosen: [(String, String)] = []
        for section in PolicySlot.Section.allCases {
            let inSection = slots.filter { $0.section == section }
            let fields: Fields
            if section == .machine {
                fields = machine
            } else {
                guard let f = top[section.rawValue] else { continue }
                fields = try f.mapping()
                try fields.only(inSection.map(\.key))
            }
            for slot in inSection {
                guard let field = fields[slot.key] else { continue }
                chosen.append((slot.name, try field.choice(slot.policies.map(\.name), what: "policy for \(slot.name)")))
            }
        }
        chosen += overrides
        var result: [(slot: String, policy: String)] = []
        for slot in slots {
            let policy = chosen.last { $0.0 == slot.name }?.1 ?? slot.defaultPolicy
            slot.apply(policy, &targets)
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
        let def = try Steps.find(name, architecture: context.architecture, at: fields)
        let (arguments, action) = try def.prepared(args, context, calledAs: name)
        return PreparedStep(index: index, line: line, name: name, arguments: arguments, expect: expect, action: action)
    }
}
