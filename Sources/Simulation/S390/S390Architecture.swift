import Hardware
import HostKernel
import Hypervisor
import PageTables

/// What the s390 host kernel's secure-storage exception handler did.
public struct S390HostStats: Hashable, Sendable {
    /// Secure-storage access exceptions (PGM 0x3d) host CPU accesses took.
    public var exceptions: UInt64 = 0
    public var exportedByHandler: UInt64 = 0
    public var bugs: UInt64 = 0
    public var sigsegv: UInt64 = 0
    /// Device accesses (DMA, writeback and swap I/O) to a secure page (not checked by the CPU).
    public var deviceSecureAccesses: UInt64 = 0
}

/// The s390 protected-virtualization platform: the Ultravisor's secure storage, KVM's
/// protected guests over the VMM's memory, and the host kernel's handling of secure pages
/// (arch_make_folio_accessible where Linux calls it, the PGM 0x3d handler, exports on PTE
/// clears). docs/s390-pv.md.
public struct S390Platform: Platform {
    public internal(set) var uv = Ultravisor()
    public internal(set) var kvm: KVMS390PV
    public internal(set) var host = S390HostStats()

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        kernel.user.recordsEvents = true
        kvm = KVMS390PV(guests: guests.count)
    }

    public var ownership: any HostOwnership { UVOwnership(uv: uv) }

    /// A host kernel access (the identity map; user contexts reach a user address): the PGM
    /// 0x3d handler's result as a HostAccessOutcome (a BUG is an oops, a user failure SIGSEGV).
    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        switch access(&kernel, pfn: pa >> pageShift, write: write, userAddress: context == .user || context == .userCopy) {
        case .ok, .resolved: return .ok
        case .bug: return .fault(cause: .ownership(Self.pgm3d), end: .oops)
        case .sigsegv: return .fault(cause: .ownership(Self.pgm3d), end: .sigsegv)
        case .repeats: return .fault(cause: .ownership(Self.pgm3d), end: .oops)  // a hang; the step itself prints it as one
        }
    }
    static let pgm3d = FaultKind("secure storage access")

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int, kind: HostWriteKind) -> any Outcome {
        access(&kernel, pfn: pa >> pageShift, write: write, userAddress: context == .user || context == .userCopy)
    }

    /// A CPU access to frame `pfn`: the exception and its handler, counted; a write that
    /// goes through changes the frame's content.
    mutating func access(_ kernel: inout Kernel, pfn: UInt64, write: Bool, userAddress: Bool) -> SecureStorageAccess {
        let r = kernel.secureStorageAccess(pfn: pfn, userAddress: userAddress, &uv)
        switch r {
        case .ok: break
        case .resolved(let by):
            host.exceptions += 1
            if by == .exported { host.exportedByHandler += 1 }
        case .bug: host.exceptions += 1; host.bugs += 1
        case .sigsegv: host.exceptions += 1; host.sigsegv += 1
        case .repeats: host.exceptions += 1
        }
        if write && r.kind == .success { hostWrite(pfn) }
        return r
    }

    /// A host CPU's or a device's write to frame `pfn`: it holds a new host token (bit 62,
    /// never a guest's token).
    mutating func hostWrite(_ pfn: UInt64) {
        hostWrites += 1
        uv.setContent(pfn, 1 << 62 | hostWrites)
    }
    var hostWrites: UInt64 = 0

    public static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        KernelStatus.error(.EINVAL)  // s390-pv guests have no kernel in the model: the reader refuses `guest:` first
    }

    public func isInaccessible(_ pfn: UInt64) -> Bool { !uv.hostAccessible(pfn) }

    public mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? {
        withAccess { $0.makeAccessible(pfn, folio: &folio) }
    }

    public mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) {
        withAccess { $0.take(events, &mm) }
    }

    /// Runs `body` with the UV moved (not copied) into the user-mapping code's view of it,
    /// so its tables stay uniquely held while GUP, reclaim or writeback change them.
    mutating func withAccess<R>(_ body: (inout UVAccessibility) -> R) -> R {
        var acc = UVAccessibility(uv: uv, host: host)
        uv = Ultravisor()
        defer { uv = acc.uv; host = acc.host }
        return body(&acc)
    }

    /// A user-mapping call on `mm` with the UV as its view, the page events it queued
    /// delivered after it (what each user step does, for the workload and the bench).
    mutating func withAccess<R>(_ mm: inout UserMM, _ body: (inout UserMM, inout UVAccessibility) -> R) -> R {
        withAccess { acc in
            let r = body(&mm, &acc)
            mm.deliverEvents(&acc)
            return r
        }
    }

    public mutating func userAccess(_ kernel: inout Kernel, pfn: UInt64, write: Bool) -> (any Outcome)? {
        let r = access(&kernel, pfn: pfn, write: write, userAddress: true)
        return r == .ok ? nil : r
    }

    public mutating func noteAccess(pfn: UInt64, write: Bool, device: Bool) {
        guard device else { return }
        if isInaccessible(pfn) { host.deviceSecureAccesses += 1 }
        if write { hostWrite(pfn) }
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] {
        Kernel.userMetrics.values(kernel) + Self.kernelMetrics.values(kernel) + Self.metricList.values(self)
    }

    static let kernelMetrics: [Metric<Kernel>] = [
        Metric("user_swap_outs", "pages", "anonymous pages reclaim wrote to swap and freed") { $0.user.stats.swapOuts },
        Metric("user_swap_ins", "pages", "pages do_swap_page read back from swap") { $0.user.stats.swapIns },
        Metric("user_folio_splits", "folios", "large folios split into small ones (split_folio)") { $0.user.stats.folioSplits },
    ]

    static let metricList: [Metric<S390Platform>] = [
        Metric("uv_secure_pages", "pages", "host frames the Ultravisor holds as secure storage now") { UInt64($0.uv.secure.count) },
        Metric("uv_secure_cpus", "CPUs", "secure CPUs the live configurations hold (one per protected vCPU)") { UInt64($0.uv.configurations.reduce(0) { $0 + ($1.live ? $1.cpus : 0) }) },
        Metric("uv_imports", "pages", "UVC_CMD_CONV_TO_SEC_STOR that made a page secure") { $0.uv.stats.imports },
        Metric("uv_exports", "pages", "UVC_CMD_CONV_FROM_SEC_STOR that exported a secure page (encrypted for the host)") { $0.uv.stats.exports },
        Metric("uv_destroys", "pages", "UVC_CMD_DESTR_SEC_STOR that cleared a secure page") { $0.uv.stats.destroys },
        Metric("uv_pins_shared", "pages", "UVC_CMD_PIN_PAGE_SHARED that pinned a guest-shared page") { $0.uv.stats.pinsShared },
        Metric("uv_integrity_failures", "imports", "imports refused because the page is not what the UV exported") { $0.uv.stats.integrityFailures },
        Metric("uv_busy", "calls", "UVCs answered busy or partial (cc 2 or 3)") { $0.uv.stats.busy },
        Metric("uv_refused", "calls", "UVCs refused (cc 1)") { $0.uv.stats.refused },
        Metric("s390_secure_storage_exceptions", "exceptions", "host CPU accesses that took a secure-storage access exception (PGM 0x3d)") { $0.host.exceptions },
        Metric("s390_exception_exports", "pages", "pages the PGM 0x3d handler exported") { $0.host.exportedByHandler },
        Metric("s390_exception_bugs", "exceptions", "PGM 0x3d on a kernel address that arch_make_folio_accessible could not resolve: BUG()") { $0.host.bugs },
        Metric("s390_exception_sigsegv", "exceptions", "PGM 0x3d on a user address that could not be resolved: SIGSEGV") { $0.host.sigsegv },
        Metric("s390_device_secure_accesses", "accesses", "device reads or writes of a secure page (I/O is not checked by the CPU)") { $0.host.deviceSecureAccesses },
        Metric("pv_guest_accesses", "accesses", "protected guest accesses run") { $0.kvm.stats.accesses },
        Metric("pv_dat_faults", "faults", "guest DAT faults KVM resolved by faulting the VMM's page in") { $0.kvm.stats.datFaults },
        Metric("pv_imports", "pages", "guest pages KVM imported on a non-secure storage access (PGM 0x3e)") { $0.kvm.stats.imports },
        Metric("pv_import_retries", "exits", "imports that failed with an errno that re-enters SIE (-EAGAIN)") { $0.kvm.stats.retries },
        Metric("pv_sigsegv", "signals", "SIGSEGVs KVM sent the VMM (an import's -EINVAL)") { $0.kvm.stats.sigsegv },
        Metric("pv_corrupt_reads", "reads", "guest reads that found their page changed") { $0.kvm.stats.corruptReads },
        Metric("pv_destroyed_pages", "pages", "secure pages destroyed at kvm_s390_pv_deinit_vm") { $0.kvm.stats.destroyedPages },
    ]

    public static let definition = ArchitectureDefinition(
        name: "s390-pv",
        summary: "s390 protected virtualization: the Ultravisor's secure storage, KVM's protected guests in the VMM's memory, arch_make_folio_accessible where Linux calls it",
        isa: .s390x, guestIDs: 1...255, guestKernels: false, vmKeys: ["name"],
        steps: UserSteps.all.filter { !Self.x86UserSteps.contains($0.name) } + S390Steps.all,
        workloads: S390Steps.workloads,
        policySlots: Policies.userMappings.filter { $0.section == .host },
        invariants: [
            Invariant(name: "uv-pg-arch1", layer: "HostKernel",
                      summary: "every secure page the host cannot access (not shared by its guest) is a small folio with PG_arch_1 set: the flag may over-indicate, never under-indicate") { m throws(InvariantViolation) in
                guard let p = m.platform as? S390Platform else { return }
                for pfn in p.uv.secure.keys.sorted() where !p.uv.hostAccessible(pfn) {
                    guard let f = m.kernel.user.folio(pfn) else { throw InvariantViolation("uv-pg-arch1", "secure page \(hex(pfn << pageShift)) is no folio of the host's") }
                    guard f.order == 0, f.flags.contains(.arch1) else {
                        throw InvariantViolation("uv-pg-arch1", "secure page \(hex(pfn << pageShift)) is a folio of order \(f.order)\(f.flags.contains(.arch1) ? "" : " without PG_arch_1")")
                    }
                }
            },
        ],
        metrics: Kernel.userMetrics.map(\.info) + kernelMetrics.map(\.info) + metricList.map(\.info),
        makePlatform: { kernel, guests in S390Platform(kernel: &kernel, guests: guests) },
        checkMachine: { config, _, _ in
            config.user.inaccessibleCheck == .unmapped
                ? ("host.inaccessible-check", "'unmapped' is guest_memfd's design; on s390-pv KVM runs a protected guest through the VMM's own page tables (the gmap), so its memory is always mapped: choose gup-and-writeback or vm-normal-page")
                : nil
        })

    /// User steps that only make sense on x86 (its raw PTE encoding, the vDSO's vvar, TTM's inserts).
    static let x86UserSteps: Set<String> = ["user-pte", "map_vdso", "vmf_insert_pfn_prot", "vmf_insert_pfn", "vmf_insert_mixed", "vmf_insert_mixed_prot", "vmf_insert_pfn_pmd"]
}

/// The UV as the user-mapping code sees it: a secure page the guest has not shared is
/// inaccessible; arch_make_folio_accessible pins or exports it; the kernel's page events
/// are s390's (exports on PTE clears, swap I/O carrying the page's content).
struct UVAccessibility: PageAccessibility {
    var uv: Ultravisor
    var host: S390HostStats

    func isInaccessible(_ pfn: UInt64) -> Bool { !uv.hostAccessible(pfn) }

    mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? {
        if case .failure(let e) = folio.makeAccessible(pfn: pfn & ~(UInt64(1 << folio.order) - 1), &uv) { return e }
        return nil
    }

    mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) {
        for case .swapOut(let pfn, _) in events where isInaccessible(pfn) { host.deviceSecureAccesses += 1 }
        let exported = UInt64(mm.takeS390Events(events, &uv))
        host.exceptions += exported
        host.exportedByHandler += exported
    }
}

/// The UV's secure storage as the host's ownership check sees it (for maps and records).
struct UVOwnership: HostOwnership {
    let uv: Ultravisor
    func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck {
        uv.hostAccessible(pa >> pageShift) ? .allowed : .fault(S390Platform.pgm3d)
    }
    func isGuestOwned(pfn: UInt64) -> Bool { uv.isSecure(pfn) }
    func regionHasGuestPages(pfn: UInt64) -> Bool { (0..<UInt64(512)).contains { uv.isSecure((pfn & ~511) + $0) } }
    func faultReason(pa: UInt64, mappingSize: PageSize) -> String {
        guard let s = uv.secure[pa >> pageShift] else { return "" }
        return "secure storage of configuration \(s.guest), guest page \(hex(s.gfn << pageShift))"
    }
}
