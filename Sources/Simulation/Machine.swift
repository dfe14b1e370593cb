import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The whole simulated machine: the host kernel, the platform of its architecture, the
/// guests' own kernels, the run's seeded generator and step counters. A struct of structs,
/// so a copy is a snapshot.
public struct Machine: Sendable {
    public let architecture: ArchitectureDefinition
    public internal(set) var kernel: Kernel
    /// The architecture's hardware and hypervisor backend.
    public internal(set) var platform: any Platform
    /// The guests, in scenario order.
    public let guests: [GuestSpec]
    /// Each guest's own kernel (its direct map), in the same order.
    public internal(set) var guestKernels: [GuestKernel]
    /// arm64 with MTE: the KVM VMs whose tags the MTE steps follow.
    public internal(set) var kvmMTE = KVMMTE()
    public internal(set) var rng: SeededGenerator
    /// Operations run and those that were errors, workloads' operations counted one by one.
    public internal(set) var counters = RunCounters()
    /// Step results that were kernel errors (-E…), workloads' operations included.
    public var errors: Int { counters.errors }
    /// Operations run, workloads' operations counted one by one.
    public var operations: Int { counters.operations }
    /// Called now and then by long workloads with (done, total), for a progress line.
    public var onProgress: (@Sendable (UInt64, UInt64) -> Void)?
    /// Inside workloads, record every metric every this many of the workload's operations
    /// (`--sample N`); the runner collects them with the step that ran the workload.
    public var sampleEvery: UInt64?
    /// Without `sampleEvery`: cut each workload into this many batches, sampling at each
    /// batch's end (for a trace's progress slices).
    public var workloadBatches: UInt64?
    /// Samples taken inside the current step's workload.
    public internal(set) var workloadSamples: [Sample] = []

    public init(architecture: ArchitectureDefinition, kernel: Kernel, guests: [GuestSpec] = [], seed: UInt64) throws(HostKernelError) {
        self.architecture = architecture
        self.kernel = kernel
        self.guests = guests
        var gks: [GuestKernel] = []
        for g in guests where architecture.guestKernels {
            var config = g.kernelConfig
            architecture.guestKernelConfig(&config)
            gks.append(try GuestKernel(name: g.name, memory: g.memory, config: config))
        }
        self.guestKernels = gks
        // Guests' memory is theirs: user pages come from elsewhere.
        for g in guests where g.memory > 0 { self.kernel.user.reserve(g.placement..<g.placement + g.memory) }
        self.platform = architecture.makePlatform(&self.kernel, guests)
        self.rng = SeededGenerator(seed: seed)
    }

    /// The host's CPUs (the kernel holds them, with their TLBs).
    public var cpus: Int { kernel.cpuCount }

    /// Runs `body` with the platform as its concrete type `P`, taken out of the machine so
    /// both can change without copying either (the platform's arrays stay uniquely held).
    /// The platform's box is moved, not its value: no cast copies the platform out and no
    /// new box is made for it on the way back.
    public mutating func withPlatform<P: Platform, R, E: Error>(_ type: P.Type, _ body: (inout P, inout Machine) throws(E) -> R) throws(E) -> R {
        guard Swift.type(of: platform) == P.self else {
            preconditionFailure("a \(P.self) step on a \(architecture.name) machine")  // the scenario reader checks the architecture
        }
        var held = platform
        platform = NoPlatform()  // `held` now holds the box alone
        defer { platform = held }
        return try held.inPlace(as: P.self) { (p: inout P) throws(E) -> R in try body(&p, &self) }
    }

    /// Runs one prepared step of a scenario on this machine (the library's way to drive a
    /// machine step by step; `Runner.run` does it for a whole scenario).
    public mutating func run(_ step: PreparedStep) throws(HostKernelError) -> any Outcome { try step.action(&self) }

    /// Counts one operation and its error, if it is one.
    mutating func count(_ outcome: any Outcome) {
        counters.operations += 1
        if outcome.isError { counters.errors += 1 }
    }

    /// Runs a host-kernel operation and counts it.
    mutating func apply(_ op: KernelOperation) throws(HostKernelError) -> any Outcome {
        let result = try op.apply(to: &kernel)
        count(result)
        return result
    }

    /// A workload's tick after its `done`-th of `total` operations: a sample every
    /// `sampleEvery`, a progress call every 4096. `platform` is the platform a workload holds
    /// while `withPlatform` has it out of the machine.
    /// Guest `i`'s kernel booted afresh (its VM was destroyed and is created again): the
    /// direct map as at boot, no acceptance state.
    mutating func rebootGuestKernel(_ i: Int) {
        let g = guests[i]
        var config = g.kernelConfig
        architecture.guestKernelConfig(&config)
        guestKernels[i] = (try? GuestKernel(name: g.name, memory: g.memory, config: config)) ?? guestKernels[i]
    }

    @inline(__always) mutating func tick(_ done: UInt64, _ total: UInt64) {
        if sampleEvery != nil || workloadBatches != nil, sampleDue(done, total) { sample(done, total) }
        if done & 4095 == 0 { onProgress?(done, total) }
    }

    @inline(__always) mutating func tick<P: Platform>(_ done: UInt64, _ total: UInt64, platform: P) {
        if sampleEvery != nil || workloadBatches != nil, sampleDue(done, total) { sample(done, total, platform: platform) }
        if done & 4095 == 0 { onProgress?(done, total) }
    }

    /// The operations between samples inside a workload of `total` operations, if any.
    func batchSize(_ total: UInt64) -> UInt64? {
        sampleEvery ?? workloadBatches.map { max(1, (total + $0 - 1) / $0) }
    }

    /// Whether a sample falls after the `done`-th operation: every batch, and for trace
    /// batches the last operation too (the last batch may be short).
    func sampleDue(_ done: UInt64, _ total: UInt64) -> Bool {
        guard let n = batchSize(total) else { return false }
        return done % n == 0 || (sampleEvery == nil && done == total)
    }

    /// Records every metric now, inside a workload, after `done` of `total` operations.
    mutating func sample(_ done: UInt64, _ total: UInt64, platform: (any Platform)? = nil) {
        workloadSamples.append(Sample(step: 0, operation: done, of: total, metrics: metrics(with: platform ?? self.platform)))
    }

    /// Hands over the samples taken inside the step that just ran, tagged with it.
    mutating func takeWorkloadSamples(step: Int) -> [Sample] {
        defer { workloadSamples = [] }
        return workloadSamples.map { Sample(step: step, operation: $0.operation, of: $0.total, metrics: $0.metrics) }
    }

    /// The metrics every machine reports after its layers': what the run did.
    public static let runMetrics: [MetricInfo] = [
        MetricInfo("operations", "operations", "steps that act on the machine (not switches such as fail_page_alloc), and a workload's operations one by one"),
        MetricInfo("errors", "operations", "operations that returned a kernel error (-E…), expected ones included; hardware statuses and faults are not errors"),
    ]

    /// Every counter the machine's layers keep, in a fixed order: the host kernel's, the
    /// platform's, then the run's.
    public var metrics: [(String, UInt64)] { metrics(with: platform) }

    /// The metrics with `platform` as the machine's (a workload holds it out of the machine).
    func metrics(with platform: any Platform) -> [(String, UInt64)] {
        Kernel.metrics(kernel.config.isa).values(kernel) + kernel.cpuMetrics + platform.metrics(kernel: kernel)
            + (kernel.config.mte ? MTEHost.metrics.values(kernel.mte.stats) : [])
            + [("operations", UInt64(operations)), ("errors", UInt64(errors))]
    }

    /// One metric's value, computing only its group where it can: the explorer checks a
    /// scenario's asserts at every state.
    func metric(named name: String) -> UInt64 {
        if name == "operations" { return UInt64(operations) }
        if name == "errors" { return UInt64(errors) }
        if kernel.config.mte, let m = MTEHost.metrics.first(where: { $0.info.name == name }) { return m.read(kernel.mte.stats) }
        return metrics.first { $0.0 == name }?.1 ?? 0
    }

    /// The metrics a machine of `architecture` with `cpus` CPUs reports, declared, in order.
    public static func metricInfo(_ architecture: ArchitectureDefinition, cpus: Int = 1, mte: Bool = false) -> [MetricInfo] {
        Kernel.metrics(architecture.isa).map(\.info) + Kernel.cpuMetricInfo(cpus: cpus) + architecture.metrics
            + (mte ? MTEHost.metrics.map(\.info) : []) + runMetrics
    }

    /// Checks every invariant the machine's layers register, in registry order, but those
    /// named in `except`. With `full` false, an invariant that has a per-step form (checked
    /// over the regions changed since the last check, `trackChanges`) runs that instead of
    /// its full walk.
    public func checkInvariants(except: [String] = [], full: Bool = true) throws(InvariantViolation) {
        for invariant in invariants where !except.contains(invariant.name) {
            if !full, let perStep = invariant.perStep { try perStep(self) } else { try invariant.check(self) }
        }
    }

    /// Notes the regions each page-table change touches from now on (host and guest kernels).
    public mutating func trackChanges() {
        kernel.trackChanges()
        for i in guestKernels.indices { guestKernels[i].trackChanges() }
    }

    /// Forgets the regions noted so far (a check covered them).
    public mutating func resetChanges() {
        kernel.resetChanges()
        for i in guestKernels.indices { guestKernels[i].resetChanges() }
    }

    /// How many steps apart `--check` walks everything, when not told: every step while what a
    /// full walk visits is small enough to cost little (at most 16,384 tables of 512 entries,
    /// about 8 million entries: the kernels' page tables and the platform's own, such as
    /// SNP's RMP and stage-2 tables), every 64 steps beyond. `Runner` asks again after each
    /// step, as the tables grow.
    public var automaticFullCheckInterval: Int {
        kernel.pageTable.tablePages + guestKernels.reduce(0) { $0 + $1.kernel.pageTable.tablePages }
            + platform.checkedTablePages <= 16_384 ? 1 : 64
    }

    /// The invariants of this machine's layers, in registry order.
    public var invariants: [Invariant] { Invariants.of(architecture) }

    /// The index of the guest named `name`.
    public func guestIndex(_ name: String) -> Int? { guests.firstIndex { $0.name == name } }
}

/// What a run counts of its operations.
public struct RunCounters: Hashable, Sendable {
    /// Operations run, a workload's counted one by one.
    public var operations = 0
    /// Those that returned a kernel error (-E…) or were refused by the hypervisor.
    public var errors = 0
}

/// A named invariant a layer registers; checked after every step in `--check` runs and tests.
public struct Invariant: Sendable {
    public let name: String
    public let layer: String
    public let summary: String
    let check: @Sendable (Machine) throws(InvariantViolation) -> Void
    /// What can be checked after a step without a full walk (the regions the step changed),
    /// when the full check waits for the next full walk; nil: the full check is cheap and
    /// runs after every step.
    let perStep: (@Sendable (Machine) throws(InvariantViolation) -> Void)?

    public init(name: String, layer: String, summary: String,
                perStep: (@Sendable (Machine) throws(InvariantViolation) -> Void)? = nil,
                check: @escaping @Sendable (Machine) throws(InvariantViolation) -> Void) {
        self.name = name
        self.layer = layer
        self.summary = summary
        self.perStep = perStep
        self.check = check
    }
}

/// The registry of invariants every machine has; architectures add theirs.
public enum Invariants {
    public static let common: [Invariant] = [
        Invariant(name: "page-table", layer: "PageTables",
                  summary: "leaf counts and table pages equal a walk; every table reached once; free tables empty",
                  perStep: { m throws(InvariantViolation) in try m.kernel.pageTable.checkInvariants(over: m.kernel.pageTable.touched ?? TouchedRanges()) }) { m throws(InvariantViolation) in
            try m.kernel.pageTable.checkInvariants()
        },
        // direct_pages_count is a count over the whole direct map: full walks only.
        Invariant(name: "direct-pages-count", layer: "HostKernel",
                  summary: "direct_pages_count equals the direct-map walk; vmalloc aliases share the C-bit",
                  perStep: { _ throws(InvariantViolation) in }) { m throws(InvariantViolation) in
            try m.kernel.checkDirectMapInvariants()
        },
        Invariant(name: "tlb", layer: "HostKernel",
                  summary: "no CPU (host CPU or guest vCPU) holds a translation that disagrees with the page table, unless a *_noflush change is still unflushed") { m throws(InvariantViolation) in
            try m.kernel.checkTLBInvariants()
            for g in m.guestKernels { try g.kernel.checkTLBInvariants() }
        },
        Invariant(name: "guest-direct-map", layer: "GuestKernel",
                  summary: "each guest kernel's page table and direct_pages_count are consistent",
                  perStep: { m throws(InvariantViolation) in
                      for g in m.guestKernels { try g.kernel.pageTable.checkInvariants(over: g.kernel.pageTable.touched ?? TouchedRanges()) }
                  }) { m throws(InvariantViolation) in
            for g in m.guestKernels {
                try g.kernel.pageTable.checkInvariants()
                try g.kernel.checkDirectMapInvariants()
            }
        },
    ]

    /// The invariants a machine of `architecture` has, in registry order.
    public static func of(_ architecture: ArchitectureDefinition) -> [Invariant] { common + architecture.invariants }

    /// Every invariant of every architecture, for `list invariants`.
    public static var all: [Invariant] { common + Architectures.all.flatMap(\.invariants) }
}
