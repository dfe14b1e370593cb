import Hardware
import HostKernel
import PageTables

/// An architecture as the simulation knows it: its name, how to build its platform, and
/// everything it adds to scenarios (steps, workloads, policy slots, invariants, metrics).
/// Each modelled architecture registers one of these from its `Simulation/<ARCH>/` folder;
/// `Architectures.all` lists them, one line each.
public struct ArchitectureDefinition: Sendable {
    public let name: String
    public let summary: String
    public let modelled: Bool
    /// The host kernel's architecture (its page tables, layout and set_memory_*).
    public let isa: KernelISA
    /// The machine keys only an x86 kernel has.
    public static let x86MachineKeys = ["gbpages", "la57", "mem-encrypt", "sme-coherent"]
    /// The machine keys only an arm64 kernel has.
    public static let arm64MachineKeys = ["mte", "mte-restore-steps"]
    /// Machine keys that only this kind of kernel has.
    public var machineKeys: [String] {
        switch isa {
        case .x86_64: Self.x86MachineKeys
        case .arm64: Self.arm64MachineKeys
        case .s390x: []
        }
    }
    /// Whether scenarios may define guests, and the largest guest identifier (ASID on SNP).
    public let guestIDs: ClosedRange<UInt64>?
    /// Whether guests are placed in host memory with a kernel of their own (SEV-SNP), or are
    /// only VMs that the steps give pages to, one by one (pKVM: `name` and `protected`).
    public let guestKernels: Bool
    /// The keys a guest without a kernel takes under `guests:` (pKVM: `name`, `protected`).
    public let vmKeys: [String]
    public let steps: [StepDefinition]
    public let workloads: [WorkloadDefinition]
    public let policySlots: [PolicySlot]
    public let invariants: [Invariant]
    /// The platform's metrics, in the order its `metrics(kernel:)` reports them.
    public let metrics: [MetricInfo]
    /// Counter tracks for traces: a track's name and the metrics it draws.
    public let traceTracks: [(track: String, metrics: [String])]
    /// Routines a thread of an explorer scenario runs as their atomic actions (docs/explorer.md).
    public let threadRoutines: [ThreadRoutineDefinition]
    let makePlatform: @Sendable (inout Kernel, [GuestSpec]) -> any Platform
    /// What the architecture's guests' kernels are built with beyond the scenario's
    /// `guest.` policies (a TDX guest's cc_mask is its shared bit).
    let guestKernelConfig: @Sendable (inout KernelConfig) -> Void
    /// A state the machine cannot be in, found when the scenario is read (the host kernel's
    /// configuration, RAM and guests together): nil, or what conflicts with what, and the
    /// policy slot at fault if one is.
    let checkMachine: @Sendable (KernelConfig, PhysicalMemory, [GuestSpec]) -> (slot: String?, message: String)?

    public init(
        name: String, summary: String, modelled: Bool = true, isa: KernelISA = .x86_64, guestIDs: ClosedRange<UInt64>? = nil, guestKernels: Bool = true, vmKeys: [String] = ["name", "protected"],
        steps: [StepDefinition] = [], workloads: [WorkloadDefinition] = [], policySlots: [PolicySlot] = [],
        invariants: [Invariant] = [], metrics: [MetricInfo] = [], traceTracks: [(track: String, metrics: [String])] = [],
        threadRoutines: [ThreadRoutineDefinition] = [],
        makePlatform: @escaping @Sendable (inout Kernel, [GuestSpec]) -> any Platform = { _, _ in NoPlatform() },
        checkMachine: @escaping @Sendable (KernelConfig, PhysicalMemory, [GuestSpec]) -> (slot: String?, message: String)? = { _, _, _ in nil },
        guestKernelConfig: @escaping @Sendable (inout KernelConfig) -> Void = { _ in }
    ) {
        self.guestKernelConfig = guestKernelConfig
        self.name = name
        self.summary = summary
        self.modelled = modelled
        self.isa = isa
        self.guestIDs = guestIDs
        self.guestKernels = guestKernels
        self.vmKeys = vmKeys
        self.steps = steps
        self.workloads = workloads
        self.policySlots = policySlots
        self.invariants = invariants
        self.metrics = metrics
        self.traceTracks = traceTracks
        self.threadRoutines = threadRoutines
        self.makePlatform = makePlatform
        self.checkMachine = checkMachine
    }

    /// A name scenarios may give that has no model yet (a clear error until it lands).
    static func planned(_ name: String, _ summary: String) -> ArchitectureDefinition {
        ArchitectureDefinition(name: name, summary: summary + " — not modelled yet", modelled: false)
    }
}

/// The registry of architectures. Adding one is its folders and one line here.
public enum Architectures {
    public static let all: [ArchitectureDefinition] = [
        x86_64,
        SNPArchitecture.definition,
        SEVPlatform.definition,
        TDXPlatform.definition,
        Arm64Architecture.definition,
        CCAArchitecture.definition,
        PKVMArchitecture.definition,
        arm64MTE,
        S390Platform.definition,
    ]

    /// Not an architecture: a name that says how to ask for MTE.
    static let arm64MTE = ArchitectureDefinition(
        name: "arm64-mte", summary: "Arm MTE: not an architecture; give arch: arm64 with machine.mte: true (docs/mte.md)", modelled: false)

    /// The plain x86-64 host: boot direct map, change_page_attr, vmalloc aliases, host faults.
    public static let x86_64 = ArchitectureDefinition(
        name: "x86-64", summary: "x86-64 host: boot direct map, change_page_attr, vmalloc aliases",
        threadRoutines: HostThreadRoutines.x86)

    public static func named(_ name: String) -> ArchitectureDefinition? { all.first { $0.name == name } }
    public static var modelled: [ArchitectureDefinition] { all.filter(\.modelled) }
}

/// What an architecture adds to a machine beyond the host kernel: its hardware tables and
/// hypervisor backend. A value, so a copied machine is a snapshot; each architecture's steps
/// reach their own platform type with `Machine.withPlatform`.
public protocol Platform: Sendable {
    /// The architecture's metrics, in the order its definition declares them.
    func metrics(kernel: Kernel) -> [(String, UInt64)]
    /// The ownership check host accesses meet.
    var ownership: any HostOwnership { get }
    /// A host kernel access on CPU `cpu` through this platform's ownership check, counted.
    mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome
    /// set_memory_encrypted/decrypted in guest `guest`'s own kernel, with the architecture's
    /// conversion protocol.
    static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome
    /// set_memory_encrypted/decrypted in guest `guest`'s kernel on a virtual address of
    /// its own (a vmalloc address, say); nil where the model has no such path.
    static func guestSetMemory(_ m: inout Machine, guest: Int, va: UInt64, numpages: Int, encrypt: Bool) -> (any Outcome)?
    /// The platform's state for guest `guest`'s frame at `gpa` (its ownership entry), folded
    /// for the explorer's state key; 0 where the platform keeps none.
    func footprintDigest(guest: Int, gpa: UInt64) -> UInt64
    /// The platform's state for host physical address `pa` (its ownership of the granule),
    /// folded for the explorer's state key; 0 where the platform keeps none.
    func hostFootprintDigest(pa: UInt64) -> UInt64
    /// Whether the hardware keeps host frame `pfn` from the host kernel (an SEV guest's
    /// encrypted page, an s390 secure page): what GUP, writeback and kmap meet.
    func isInaccessible(_ pfn: UInt64) -> Bool
    /// arch_make_folio_accessible for `pfn` (its folio given): nil, or the errno it fails with.
    mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno?
    /// The host kernel's page events (a protected mm's PTE cleared, swap I/O), in order.
    mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM)
    /// A user process's own access to frame `pfn` after its fault was handled: nil when it
    /// simply happens (the platform notes it), or how the architecture ended it.
    mutating func userAccess(_ kernel: inout Kernel, pfn: UInt64, write: Bool) -> (any Outcome)?
    /// A CPU (through a user mapping or kmap) or a device touched host frame `pfn`.
    mutating func noteAccess(pfn: UInt64, write: Bool, device: Bool)
    /// A host access with how a write reaches memory (a cached line, a partial MOVNTI or UC
    /// store): what TDX's erratum tells apart. Others ignore `kind`.
    mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int, kind: HostWriteKind) -> any Outcome
    /// KVM's kvm_arch_guest_memory_reclaimed after an MMU-notifier invalidation of guest
    /// `guest`'s memory in the VMM: the frames the VMM's mapping gave up (the host may
    /// reuse them).
    mutating func guestMemoryReclaimed(guest: Int, pfns: [UInt64])
    /// What a full walk of the platform's own invariants visits, in 4K tables of 512 entries
    /// (an ownership table's expanded 2M chunks, the VMs' stage-2 table pages): counted with
    /// the kernels' page tables for `Machine.automaticFullCheckInterval`.
    var checkedTablePages: Int { get }
}

extension Platform {
    public var checkedTablePages: Int { 0 }
    public static func guestSetMemory(_ m: inout Machine, guest: Int, va: UInt64, numpages: Int, encrypt: Bool) -> (any Outcome)? { nil }
    public func footprintDigest(guest: Int, gpa: UInt64) -> UInt64 { 0 }
    public func hostFootprintDigest(pa: UInt64) -> UInt64 { 0 }
    public func isInaccessible(_ pfn: UInt64) -> Bool { false }
    public mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? { nil }
    public mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) {}
    public mutating func userAccess(_ kernel: inout Kernel, pfn: UInt64, write: Bool) -> (any Outcome)? {
        noteAccess(pfn: pfn, write: write, device: false)
        return nil
    }
    public mutating func noteAccess(pfn: UInt64, write: Bool, device: Bool) {}
    public mutating func guestMemoryReclaimed(guest: Int, pfns: [UInt64]) {}
    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int, kind: HostWriteKind) -> any Outcome {
        hostAccess(&kernel, pa: pa, write: write, context: context, cpu: cpu)
    }
}

/// The platform as the user-mapping code sees it (GUP, writeback, kmap).
struct PlatformAccessibility: PageAccessibility {
    var platform: any Platform
    func isInaccessible(_ pfn: UInt64) -> Bool { platform.isInaccessible(pfn) }
    mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? { platform.makeAccessible(pfn, folio: &folio) }
    mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) { platform.take(events, &mm) }
}

extension Platform {
    /// `body` on this platform as `P`, which its type is, in place: a mutating call opens an
    /// existential in its own box, so nothing is copied out of it.
    @inline(__always) mutating func inPlace<P: Platform, R, E: Error>(as _: P.Type, _ body: (inout P) throws(E) -> R) throws(E) -> R {
        precondition(Self.self == P.self)
        return try withUnsafeMutablePointer(to: &self) { (s) throws(E) -> R in
            try s.withMemoryRebound(to: P.self, capacity: 1) { (p) throws(E) -> R in try body(&p.pointee) }
        }
    }
}

/// The platform of a machine that is only a host (x86-64): no ownership table, no guests.
public struct NoPlatform: Platform {
    public init() {}
    public func metrics(kernel: Kernel) -> [(String, UInt64)] { [] }
    public var ownership: any HostOwnership { NoOwnership() }
    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        kernel.hostAccess(NoOwnership(), pa: pa, write: write, context: context, cpu: cpu)
    }
    public static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        KernelStatus.error(.EINVAL)  // no guests: the scenario reader refuses `guest:` first
    }
}
