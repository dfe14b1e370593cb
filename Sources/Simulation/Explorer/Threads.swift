import Hardware
import HostKernel
import Hypervisor
import PageTables

/// One entry of a scenario's `threads:`: a step run as one action, or a kernel routine whose
/// inside matters for a race, run as its sequence of atomic actions (each one scheduling
/// point). docs/explorer.md.
public struct ThreadRoutine: Sendable {
    public let name: String
    public let arguments: [(String, String)]
    public let line: Int?
    let kind: Kind
    /// For a step run as one action: the addresses it names (`Footprint`).
    var footprint: [Footprint] = []
    /// Whether it changes only the MTE host, KVM's VMs and the counters (the MTE routines
    /// and steps), so the explorer need keep only those of a state.
    var mteOnly = true

    enum Kind: Sendable {
        case atomic(StepAction)
        /// A routine an architecture breaks into actions (`ThreadRoutineDefinition`).
        case actions([ThreadAction])
        /// do_swap_page's set_pte_at for a VMM page coming back from swap (arm64, MTE): the
        /// swap cache's page, then the form's mte_sync_tags program.
        case setPTE(vma: String, page: Int)
        /// user_mem_abort for a guest frame (arm64, MTE): the page the VMM maps (or the swap
        /// cache's), then sanitise_mte_tags' program and the stage-2 map.
        case userMemAbort(vm: String, gfn: UInt64)
    }

    /// The MTE routines (arm64 with `mte: true`): their names, summaries and arguments.
    /// `readRoutine` builds their kinds (`setPTE`, `userMemAbort`), not `build`.
    static let mteRoutines: [ThreadRoutineDefinition] = [
        ThreadRoutineDefinition("set_pte_at", "do_swap_page bringing a VMM page back from swap: the swap cache's page, then mte_sync_tags in the host.mte-sync form, action by action",
                                [MTESteps.vma, MTESteps.page]) { _, _ in [] },
        ThreadRoutineDefinition("user_mem_abort", "a guest's stage-2 fault: get_user_pages (set_pte_at when the page is in swap), sanitise_mte_tags, the stage-2 map",
                                [MTESteps.vm, MTESteps.gfn]) { _, _ in [] },
    ]
}

/// One action of a routine an architecture breaks down: what a listing shows, and what it
/// does. `stop` ends the routine there (the kernel would not go on: an oops).
public struct ThreadAction: Sendable {
    public let label: String
    public let run: @Sendable (inout Machine) -> (outcome: any Outcome, stop: Bool)
    public init(_ label: String, _ run: @escaping @Sendable (inout Machine) -> (outcome: any Outcome, stop: Bool)) {
        self.label = label
        self.run = run
    }
}

/// A routine a thread runs as its atomic actions, registered by its architecture: its name,
/// its arguments, and how the actions are built from them. A thread step of that name on
/// that architecture takes this form; elsewhere the plain step of the name (if any) runs.
public struct ThreadRoutineDefinition: Sendable {
    public let name: String
    public let summary: String
    public let arguments: [Parameter]
    let build: @Sendable (StepArguments, StepContext) throws(ScenarioError) -> [ThreadAction]
    public init(_ name: String, _ summary: String, _ arguments: [Parameter],
                _ build: @escaping @Sendable (StepArguments, StepContext) throws(ScenarioError) -> [ThreadAction]) {
        self.name = name
        self.summary = summary
        self.arguments = arguments
        self.build = build
    }
}

extension ThreadRoutineDefinition {
    /// Every routine a thread runs as its atomic actions, with where it exists, for
    /// `cocomem list routines`: the MTE ones (arm64 with `mte: true`), then each
    /// architecture's.
    public static var catalogue: [(definition: ThreadRoutineDefinition, architectures: [String])] {
        var out: [(ThreadRoutineDefinition, [String])] = ThreadRoutine.mteRoutines.map { ($0, ["arm64 (mte: true)"]) }
        for a in Architectures.modelled {
            for r in a.threadRoutines {
                if let i = out.firstIndex(where: { $0.0.name == r.name && $0.0.summary == r.summary }) { out[i].1.append(a.name) }
                else { out.append((r, [a.name])) }
            }
        }
        return out
    }
}

/// Where one CPU is in its thread: the routine, and inside a broken-down routine the MTE
/// program's state (and for user_mem_abort the VM and frame it maps).
public struct ThreadState: Hashable, Sendable {
    public var routine = 0
    /// The next action of an architecture's broken-down routine.
    var pc = 0
    var mte: MTESyncThread?
    var vm: Int?
    var gfn: UInt64?
    public init() {}

    /// Folded for the explorer's state key.
    var digest: UInt64 {
        var d = Digest.combine(UInt64(routine) << 32 | UInt64(pc), mte?.digest ?? 0)
        if let vm { d = Digest.combine(d, UInt64(vm) << 1 | 1) }
        if let gfn { d = Digest.combine(d, gfn) }
        return d
    }
}

extension Machine {
    /// Whether CPU `t`'s next action can run (not finished, not waiting on PG_mte_lock).
    func canStep(_ state: ThreadState, _ routines: [ThreadRoutine]) -> Bool {
        guard state.routine < routines.count else { return false }
        if let t = state.mte { return kernel.mte.canStep(t) }
        return true
    }

    /// Runs CPU `t`'s next action; returns what it did, for listings and traces (only when
    /// `describe`: the explorer's search does not build the text).
    @discardableResult
    mutating func stepThread(_ state: inout ThreadState, _ routines: [ThreadRoutine], describe: Bool = true) throws(HostKernelError) -> String {
        let r = routines[state.routine]
        switch r.kind {
        case .atomic(let action):
            let outcome = try action(&self)
            state.routine += 1
            return "\(r.name) → \(outcome)"
        case .actions(let actions):
            let a = actions[state.pc]
            let (outcome, stop) = a.run(&self)
            state.pc += 1
            if stop || state.pc == actions.count {
                state.pc = 0
                state.routine += 1
            }
            return describe ? "\(r.name): \(a.label) → \(outcome)" + (stop ? " (the routine stops)" : "") : ""
        case .setPTE(let vmaName, let page):
            if var t = state.mte {
                let action = describe ? t.describeNext(kernel.mte.form, restoreSteps: kernel.mte.restoreSteps)! : ""
                kernel.mte.step(&t)
                state.mte = t.done ? nil : t
                if t.done {
                    if case .swap(let e) = t.old { kernel.mte.swapDone(e, t.pfn, page: t.page) }
                    state.routine += 1
                }
                return "set_pte_at: \(action)"
            }
            guard let v = kernel.mte.vmaIndex(vmaName), page < kernel.mte.vmas[v].pages else {
                throw HostKernelError("set_pte_at: no page \(page) of a mapping '\(vmaName)'")
            }
            switch kernel.mte.vmas[v].ptes[page] {
            case .swap(let e):
                guard let pfn = kernel.mte.swapCachePage(e, ram: kernel.memory.ram) else { throw HostKernelError("set_pte_at: out of memory") }
                state.mte = MTESyncThread(vma: v, page: page, pfn: pfn, old: .swap(entry: e))
                return "do_swap_page: swap entry \(e), the swap cache's pfn \(hex(pfn))"
            case .present:
                state.routine += 1
                return "set_pte_at: already mapped"
            case .none:
                _ = kernel.mte.fault(vma: v, page: page, ram: kernel.memory.ram)
                state.routine += 1
                return "do_anonymous_page and set_pte_at"
            }
        case .userMemAbort(let vmName, let gfn):
            if var t = state.mte {
                let action = describe ? t.describeNext(kernel.mte.form, restoreSteps: kernel.mte.restoreSteps)! : ""
                kernel.mte.step(&t)
                state.mte = t.done ? nil : t
                guard t.done else { return (t.sanitise ? "sanitise_mte_tags: " : "gup → set_pte_at: ") + "\(action)" }
                if !t.sanitise {
                    // The VMM's PTE is back: sanitise_mte_tags next.
                    if case .swap(let e) = t.old { kernel.mte.swapDone(e, t.pfn, page: t.page) }
                    if kvmMTE.vms[state.vm!].mte {
                        state.mte = MTESyncThread(vma: t.vma, page: t.page, pfn: t.pfn, old: t.old, sanitise: true)
                        return "gup → set_pte_at: \(action)"
                    }
                }
                kvmMTE.mapStage2(vm: state.vm!, gfn: gfn, pfn: t.pfn)
                state.routine += 1
                state.vm = nil
                return "user_mem_abort: stage-2 map of pfn \(hex(t.pfn))"
            }
            guard let v = kvmMTE.vmIndex(vmName) else { throw HostKernelError("user_mem_abort: no VM '\(vmName)'") }
            guard let (vma, page) = kvmMTE.slot(vm: v, gfn: gfn) else { throw HostKernelError("user_mem_abort: gfn \(hex(gfn)) is in no memslot of \(vmName)") }
            state.vm = v
            state.gfn = gfn
            switch kernel.mte.vmas[vma].ptes[page] {
            case .swap(let e):
                // gfn_to_pfn → get_user_pages → do_swap_page: the VMM's set_pte_at first.
                guard let pfn = kernel.mte.swapCachePage(e, ram: kernel.memory.ram) else { throw HostKernelError("user_mem_abort: out of memory") }
                state.mte = MTESyncThread(vma: vma, page: page, pfn: pfn, old: .swap(entry: e))
                return "user_mem_abort: gup → do_swap_page, swap entry \(e), the swap cache's pfn \(hex(pfn))"
            case .present(let pfn):
                if !kvmMTE.vms[v].mte {
                    kvmMTE.mapStage2(vm: v, gfn: gfn, pfn: pfn)
                    state.routine += 1
                    return "user_mem_abort: stage-2 map of pfn \(hex(pfn)) (no MTE)"
                }
                state.mte = MTESyncThread(vma: vma, page: page, pfn: pfn, old: .present(pfn: pfn), sanitise: true)
                return "user_mem_abort: gup → pfn \(hex(pfn))"
            case .none:
                guard let pfn = kernel.mte.fault(vma: vma, page: page, ram: kernel.memory.ram) else { throw HostKernelError("user_mem_abort: out of memory") }
                state.mte = MTESyncThread(vma: vma, page: page, pfn: pfn, old: .present(pfn: pfn), sanitise: kvmMTE.vms[v].mte)
                if !kvmMTE.vms[v].mte {
                    kvmMTE.mapStage2(vm: v, gfn: gfn, pfn: pfn)
                    state.routine += 1
                    state.mte = nil
                }
                return "user_mem_abort: gup → do_anonymous_page, pfn \(hex(pfn))"
            }
        }
    }
}

/// Reading `threads:`, `assert:` and `schedule:`.
extension ScenarioReader {
    /// Each thread is a list of steps, or `{name: TEXT, steps: [...]}` to call it something
    /// other than `CPU n` in listings (an NMI on another CPU, say).
    func readThreads(_ top: Fields, context: StepContext) throws(ScenarioError) -> ([[ThreadRoutine]], [String]) {
        guard let list = top["threads"] else { return ([], []) }
        let threads = try list.sequence()
        guard threads.count <= context.cpus else {
            throw list.error("\(threads.count) threads, but the machine has \(context.cpus) CPU\(context.cpus == 1 ? "" : "s"): give machine.cpus")
        }
        var out: [[ThreadRoutine]] = [], names: [String] = []
        for (t, thread) in threads.enumerated() {
            var steps = thread, name = "CPU \(t)"
            if thread.isMapping {
                let fields = try thread.mapping()
                try fields.only(["name", "steps"])
                name = try fields.required("name").text()
                steps = try fields.required("steps")
            }
            var routines: [ThreadRoutine] = []
            for (i, item) in try steps.sequence().enumerated() {
                routines.append(try readRoutine(item, thread: t, index: i + 1, context: context))
            }
            guard !routines.isEmpty else { throw thread.error("thread \(t) has no steps") }
            out.append(routines)
            names.append(name)
        }
        return (out, names)
    }

    func readRoutine(_ item: Field, thread: Int, index: Int, context: StepContext) throws(ScenarioError) -> ThreadRoutine {
        let fields = try item.mapping()
        if fields["expect"] != nil {
            throw fields.keyError("expect", "a thread's step takes no 'expect:' (its result depends on the interleaving); write the condition under 'assert:'")
        }
        guard let name = fields.entries.first?.0, let args = fields[name] else { throw item.error("a thread step is one operation") }
        let line = item.node.mark?.line
        if let def = context.architecture.threadRoutines.first(where: { $0.name == name }) {
            let a = try StepArguments(args, schema: def.arguments, context: context)
            return ThreadRoutine(name: name, arguments: a.echoed, line: line, kind: .actions(try def.build(a, context)),
                                 footprint: Footprint.of(a.echoed), mteOnly: false)
        }
        guard let mte = ThreadRoutine.mteRoutines.first(where: { $0.name == name }) else {
            let step = try readStep(item, index: index, context: context)
            return ThreadRoutine(name: step.name, arguments: step.arguments, line: line, kind: .atomic(step.action), footprint: Footprint.of(step.arguments),
                                 mteOnly: MTESteps.all.contains { $0.name == step.name })
        }
        guard context.kernel.config.isa == .arm64, context.kernel.config.mte else {
            throw fields.keyError(name, "\(name) is arm64 MTE's: give 'arch: arm64' and 'mte: true' under machine")
        }
        let a = try StepArguments(args, schema: mte.arguments, context: context)
        if name == "set_pte_at" {
            return ThreadRoutine(name: name, arguments: [("vma", a.text("vma")!), ("page", "\(a.number("page"))")], line: line,
                                 kind: .setPTE(vma: a.text("vma")!, page: Int(a.number("page"))))
        }
        return ThreadRoutine(name: name, arguments: [("vm", a.text("vm")!), ("gfn", hex(a.number("gfn")))], line: line,
                             kind: .userMemAbort(vm: a.text("vm")!, gfn: a.number("gfn")))
    }

    func readSchedule(_ top: Fields, threads: Int) throws(ScenarioError) -> [Int]? {
        guard let f = top["schedule"] else { return nil }
        guard threads > 0 else { throw f.error("a schedule orders the CPUs of 'threads:'; this scenario has none") }
        var out: [Int] = []
        for item in try f.sequence() {
            let n = try item.number()
            guard n < UInt64(threads) else { throw item.error("CPU \(n) in the schedule, but there are \(threads) threads (0 to \(threads - 1))") }
            out.append(Int(n))
        }
        return out
    }
}
