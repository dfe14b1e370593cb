import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SEV (not SNP) platform: guest memory encrypted per ASID with no ownership table and
/// no integrity, KVM's SEV side (pinned regions, launch, cache flushes), and the VMM's user
/// mappings of guest RAM on the host kernel. docs/user-mappings.md.
public struct SEVPlatform: Platform {
    public internal(set) var memory: SEVMemory
    public internal(set) var kvm: KVMSEV

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        memory = SEVMemory(coherent: kernel.config.smeCoherent)
        for g in guests { memory.addGuest(asid: g.asid, firstPFN: g.placement >> pageShift, pages: g.memory >> pageShift) }
        kvm = KVMSEV(vms: guests.count)
        kvm.reclaimFlush = kernel.config.sevReclaimFlush ? .wbinvd : .none
    }

    public var ownership: any HostOwnership { memory }

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        let r = kernel.hostAccess(memory, pa: pa, write: write, context: context, cpu: cpu)
        if write, case .fault = r {} else if write { memory.hostWrite(pa >> pageShift) }
        return r
    }

    public static func guestSetMemory(_ m: inout Machine, guest i: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        m.withPlatform(SEVPlatform.self) { p, m in
            m.guestKernels[i].sevSetMemory(gfns, encrypt: encrypt) { range, enc in p.memory.setShared(i, gfns: range, shared: !enc) }
        }
    }

    /// A guest's private page the host cannot use: SEV cannot give it back, so
    /// arch_make_folio_accessible, were SEV to implement it, fails (Dave Hansen in seed 002:
    /// "we would ideally fail it"); the model's errno is -EFAULT.
    public func isInaccessible(_ pfn: UInt64) -> Bool { memory.isGuestPrivate(pfn) }
    public mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? { memory.isGuestPrivate(pfn) ? .EFAULT : nil }

    public mutating func noteAccess(pfn: UInt64, write: Bool, device: Bool) {
        guard write else { return }
        if device { memory.deviceWrite(pfn) } else { memory.hostWrite(pfn) }
    }

    public mutating func guestMemoryReclaimed(guest: Int, pfns: [UInt64]) {
        memory.reclaim(pfns)
        kvm.guestMemoryReclaimed(guest, memory: &memory)
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] { Kernel.userMetrics.values(kernel) + Self.metricList.values(self) }

    static let metricList: [Metric<SEVPlatform>] = [
        Metric("sev_guest_corrupt_reads", "reads", "guest reads of private data a host write, a device write or a stale host-key cache line damaged") { UInt64($0.memory.stats.guestCorruptReads) },
        Metric("sev_host_corruptions", "writes", "host writes to a page whose dirty guest-key line will be written back over them (caches not coherent, no flush)") { UInt64($0.memory.stats.hostCorruptions) },
        Metric("sev_stray_writes", "writes", "host or device writes that landed on a live guest's private data") { UInt64($0.memory.stats.strayWrites) },
        Metric("sev_clflush_pages", "pages", "pages sev_clflush_pages flushed (register region, LAUNCH_UPDATE_DATA; none on SME_COHERENT CPUs)") { $0.memory.stats.clflushPages },
        Metric("sev_wbinvd", "flushes", "WBINVD on every CPU (unregister, destroy, memory reclaimed)") { UInt64($0.memory.stats.wbinvd) },
        Metric("sev_pinned_pages", "pages", "guest pages KVM holds pinned for registered regions") { UInt64($0.kvm.pinnedPages) },
    ]

    static let guest = Parameter("guest", .guest, required: true, "the guest")
    static let gpa = Parameter("gpa", .address(), required: true, "guest physical address")

    static func gpaCheck(_ a: StepArguments, pages: Int = 1) throws(ScenarioError) -> (Int, UInt64) {
        let g = a.guest!.spec, gpa = a.number("gpa")
        guard gpa & (pageBytes - 1) == 0, gpa < g.memory, UInt64(pages) <= (g.memory - gpa) >> pageShift else {
            throw a.field("gpa").error("\(hex(gpa)) + \(pages) page\(pages == 1 ? "" : "s") must be page-aligned and inside \(g.name)'s \(ByteSize.format(g.memory))")
        }
        return (a.guest!.index, gpa)
    }

    static let steps: [StepDefinition] = [
        Steps.platformStep(SEVPlatform.self, "sev_launch_start", "KVM_SEV_LAUNCH_START: the guest's ASID bound, its key in use", [guest]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index
            return { p, _ in p.kvm.launchStart(i, memory: &p.memory) }
        },
        Steps.platformStep(SEVPlatform.self, "sev_mem_enc_register_region", "KVM_MEMORY_ENCRYPT_REG_REGION: pin the guest's RAM through the VMM's mapping (FOLL_WRITE|FOLL_LONGTERM), then sev_clflush_pages unless SME_COHERENT",
                           [guest, UserSteps.process, Parameter("addr", .address(), required: true, "where the VMM maps the guest's RAM")]) { a, ctx throws(ScenarioError) in
            let i = a.guest!.index, name = a.text("process")!, addr = a.number("addr")
            guard ctx.processes.contains(where: { $0.name == name && $0.guest == nil }) else {
                throw a.field("process").error("unknown host process '\(name)'; declare the VMM under processes:")
            }
            let pages = Int(a.guest!.spec.memory >> pageShift)
            return { p, m in
                let pi = m.kernel.user.processIndex(name)!
                return p.kvm.registerRegion(i, kernel: &m.kernel, process: pi, addr: addr, pages: pages, memory: &p.memory)
            }
        },
        Steps.platformStep(SEVPlatform.self, "sev_launch_update_data", "KVM_SEV_LAUNCH_UPDATE_DATA: sev_clflush_pages (unless SME_COHERENT), then the firmware encrypts the pages in place with the guest's key",
                           [guest, gpa, Parameter("numpages", .count(1...(1 << 24)), default: "1", "pages")]) { a, _ throws(ScenarioError) in
            let n = Int(a.number("numpages"))
            let (i, gpa) = try gpaCheck(a, pages: n)
            let first = (a.guest!.spec.placement + gpa) >> pageShift
            return { p, m in
                let r = p.kvm.launchUpdateData(i, pfns: (0..<UInt64(n)).map { first + $0 }, memory: &p.memory)
                for k in 0..<UInt64(n) { m.kernel.user.unmapPrivate(guest: i, pfn: first + k) }
                return r
            }
        },
        Steps.platformStep(SEVPlatform.self, "sev_mem_enc_unregister_region", "KVM_MEMORY_ENCRYPT_UNREG_REGION: WBINVD on every CPU (CLFLUSH cannot reach guest-key lines), then unpin", [guest]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index
            return { p, m in p.kvm.release(i, destroy: false, kernel: &m.kernel, memory: &p.memory) }
        },
        Steps.platformStep(SEVPlatform.self, "sev_vm_destroy", "sev_vm_destroy: WBINVD on every CPU, the regions unpinned, the ASID freed", [guest]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index
            return { p, m in p.kvm.release(i, destroy: true, kernel: &m.kernel, memory: &p.memory) }
        },
        guestAccess("guest-read", write: false), guestAccess("guest-write", write: true),
    ]

    /// A guest's access to its page through its own direct map: private (C=1) under its key,
    /// shared (C=0) in the clear.
    static func guestAccess(_ name: String, write: Bool) -> StepDefinition {
        Steps.platformStep(SEVPlatform.self, name, "the guest \(write ? "writes" : "reads") a page through its own direct map: private (C=1) under its key, shared (C=0) in the clear; a private read reports data a host write or a stale cache line damaged",
                           [guest, gpa]) { a, _ throws(ScenarioError) in
            let (i, gpa) = try gpaCheck(a)
            let pfn = (a.guest!.spec.placement + gpa) >> pageShift
            return { p, m in
                guard let t = m.guestKernels[i].translate(gpa: gpa, vcpu: 0) else { return GuestPageFault() }
                guard t.attributes.contains(.encrypted) else {
                    if write { p.memory.hostWrite(pfn) }  // no key: what the host would write
                    return OK()
                }
                if write {
                    p.memory.guestWrite(pfn)
                    m.kernel.user.unmapPrivate(guest: i, pfn: pfn)
                    return OK()
                }
                return p.memory.guestRead(pfn) ? SEVGuestRead.corrupted : SEVGuestRead.intact
            }
        }
    }

    public static let definition = ArchitectureDefinition(
        name: "x86-sev",
        summary: "AMD SEV/SEV-ES host (no SNP): per-ASID keys, no ownership table, KVM's pinned regions and cache flushes, the VMM's user mappings of guest RAM",
        guestIDs: 1...509,
        steps: UserSteps.all + steps,
        policySlots: Policies.userMappings + [
            PolicySlot(section: .kvm, key: "sev-reclaim-flush", summary: "whether KVM flushes caches when an SEV guest's memory is reclaimed from the VMM",
                       policies: SEVReclaimFlush.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: SEVReclaimFlush.wbinvd.rawValue,
                       apply: { name, t in t.host.sevReclaimFlush = name == SEVReclaimFlush.wbinvd.rawValue }),
        ],
        invariants: [
            Invariant(name: "user-pte-encryption", layer: "HostKernel",
                      summary: "every process's page table is consistent, and each present user entry's encryption bit agrees with the page it maps (the kernel's direct map; iomem unencrypted)") { m throws(InvariantViolation) in
                try m.kernel.checkUserInvariants()
                for g in m.guestKernels { try g.kernel.checkUserInvariants() }
            },
        ],
        metrics: Kernel.userMetrics.map(\.info) + metricList.map(\.info),
        threadRoutines: HostThreadRoutines.x86,
        makePlatform: { kernel, guests in SEVPlatform(kernel: &kernel, guests: guests) })
}

/// What an SEV guest read of its private page found.
public enum SEVGuestRead: Outcome, Hashable {
    case intact, corrupted
    public var kind: OutcomeKind { self == .intact ? .success : .fault }
    public var description: String { self == .intact ? "ok" : "corrupted: the page no longer holds what the guest wrote" }
}
