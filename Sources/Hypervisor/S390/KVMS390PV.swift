import Hardware
import HostKernel
import PageTables

/// A protected guest as KVM holds it: its secure configuration, the VMM process whose
/// memory backs it (the memory slot: guest absolute address 0 at `hva`), and what the
/// guest last wrote to each page (what its reads expect).
public struct PVGuest: Hashable, Sendable {
    public let process: Int
    public let hva: UInt64
    public let pages: UInt64
    public let configuration: Int
    /// vCPUs, each a secure CPU of the configuration while the guest is protected.
    public let vcpus: Int
    /// The secure-CPU handles KVM still holds (dropped at KVM_PV_DISABLE, refused or not).
    public internal(set) var cpuHandles: Int
    public internal(set) var live = true
    public internal(set) var expected: [UInt64: UInt64] = [:]
}

/// What KVM counted for its protected guests.
public struct KVMS390Stats: Hashable, Sendable {
    /// Guest accesses run (each a SIE entry, with its exits).
    public var accesses: UInt64 = 0
    /// DAT faults KVM resolved by faulting the VMM's page in (vcpu_dat_fault_handler).
    public var datFaults: UInt64 = 0
    /// Non-secure storage access exits (PGM 0x3e) that imported the page.
    public var imports: UInt64 = 0
    /// Imports that ended in an errno that re-enters SIE (-EAGAIN, -EFAULT).
    public var retries: UInt64 = 0
    /// SIGSEGVs KVM sent the VMM (an import's -EINVAL).
    public var sigsegv: UInt64 = 0
    /// Guest reads that found something other than what the guest wrote.
    public var corruptReads: UInt64 = 0
    /// Pages destroyed at teardown (s390_uv_destroy_range).
    public var destroyedPages: UInt64 = 0
}

/// What KVM_PV_ENABLE / KVM_PV_DISABLE returned, with the UVC's answer.
public struct PVCommandOutcome: Outcome, Hashable {
    public let errno: Errno?
    public let uvc: UVCResult
    public var kind: OutcomeKind { errno == nil ? .success : .error }
    public var description: String { (errno.map { "\($0)" } ?? "0") + " (\(uvc.command) \(uvc))" }
}

/// How a protected guest's access ended.
public enum PVAccessOutcome: Outcome, Hashable {
    case ok
    /// A read that found its data damaged (not what the guest wrote).
    case corrupted
    /// The import failed with an errno that re-enters SIE: the vCPU faults again.
    case retry(ImportOutcome)
    /// The import failed with -EINVAL: KVM sends the VMM SIGSEGV (the guest is gone).
    case sigsegv(ImportOutcome)
    /// KVM_RUN returned an error: the VMM's page could not be faulted in.
    case efault(Why)
    /// The guest is not a running protected guest.
    case notProtected
    /// The guest has no such vCPU.
    case noVCPU
    /// A secure-storage violation KVM could neither destroy nor export: SIGSEGV to the VMM.
    case violation

    public var kind: OutcomeKind {
        switch self {
        case .ok: .success
        case .retry, .notProtected, .noVCPU: .status
        case .corrupted, .sigsegv, .efault, .violation: .fault
        }
    }
    public var description: String {
        switch self {
        case .ok: "ok"
        case .corrupted: "corrupted: the page no longer holds what the guest wrote"
        case .retry(let r): "\(r); the vCPU re-enters SIE and faults again"
        case .sigsegv(let r): "SIGSEGV to the VMM: the import failed, \(r)"
        case .efault(let why): "KVM_RUN -EFAULT: \(why)"
        case .notProtected: "-EINVAL: not a running protected guest (kvm_s390_pv_init_vm first)"
        case .noVCPU: "-EINVAL: the guest has no such vCPU"
        case .violation: "SIGSEGV to the VMM: a secure storage violation KVM could neither destroy nor export"
        }
    }
}

/// KVM on s390 with protected guests: the guests' secure configurations and memory slots,
/// and the exits of a protected vCPU's access. The gmap is taken to be the VMM's own page
/// table (the 6.18 gmap links the VMM's own page tables, __gmap_link). Linux 6.18
/// arch/s390/kvm/kvm-s390.c, pv.c.
public struct KVMS390PV: Hashable, Sendable {
    public internal(set) var guests: [PVGuest?]
    public internal(set) var stats = KVMS390Stats()
    /// The token the next guest write leaves in its page.
    var writes: UInt64 = 0
    /// BIT_UV_FEAT_MISC: an import of a shared page moves its ownership, so no export
    /// first (should_export_before_import).
    public var miscFeature = true

    public init(guests: Int) { self.guests = Array(repeating: nil, count: guests) }

    /// KVM_CREATE_VM's s390_enable_sie on the VMM's mm (THP off, huge PMDs split), then
    /// KVM_PV_ENABLE: kvm_s390_pv_init_vm (the mm's protected_count raised, then
    /// UVC_CMD_CREATE_SEC_CONF over the memory slot [hva, hva + pages) of process `pi`; a
    /// refused create undoes the count and is -EIO), then kvm_s390_cpus_to_pv (a secure CPU
    /// per vCPU; a refusal destroys the ones made and the configuration, -EIO). The model
    /// creates the VM with its PV enable. arch/s390/kvm/kvm-s390.c kvm_arch_init_vm,
    /// kvm_s390_handle_pv; pv.c.
    public mutating func initVM(_ g: Int, process pi: Int, hva: UInt64, pages: UInt64, vcpus: Int, kernel: inout Kernel, _ uv: inout Ultravisor) -> any Outcome {
        if let old = guests[g], old.live { return KernelStatus.error(.EINVAL) }  // kvm_s390_pv_is_protected: already
        kernel.user.enableSIE(process: pi)
        kernel.user.changeProtectedCount(process: pi, by: 1)
        let (r, conf) = uv.createConfiguration()
        guard let conf else {
            kernel.user.changeProtectedCount(process: pi, by: -1)
            return PVCommandOutcome(errno: .EIO, uvc: r)
        }
        for made in 0..<vcpus {
            let c = uv.secureCPU(conf, create: true)
            guard c.ok else {
                for _ in 0..<made { _ = uv.secureCPU(conf, create: false) }
                _ = uv.destroyConfiguration(conf)
                kernel.user.changeProtectedCount(process: pi, by: -1)
                return PVCommandOutcome(errno: .EIO, uvc: c)
            }
        }
        guests[g] = PVGuest(process: pi, hva: hva, pages: pages, configuration: conf, vcpus: vcpus, cpuHandles: vcpus)
        return PVCommandOutcome(errno: nil, uvc: r)
    }

    /// KVM_PV_DISABLE. First kvm_s390_cpus_from_pv: every vCPU's secure CPU destroyed, KVM
    /// dropping its handle whatever the UV answers; a refusal (the UV keeps that CPU) is
    /// -EIO once all were tried, and the guest stays protected. Then
    /// kvm_s390_pv_deinit_cleanup_all: UVC_CMD_DESTROY_SEC_CONF (kvm_s390_pv_deinit_vm, which
    /// "will not cleanup the guest memory"), after which KVM forgets the handle either way
    /// and lowers protected_count only on success (the "intended memory leak" leaves the mm
    /// protected); then every secure page of the mm destroyed (s390_uv_destroy_range over all
    /// of it); -EIO if the configuration was refused. kvm-s390.c kvm_s390_handle_pv; pv.c.
    public mutating func deinitVM(_ g: Int, kernel: inout Kernel, _ uv: inout Ultravisor) -> any Outcome {
        guard let guest = guests[g], guest.live else { return KernelStatus.error(.EINVAL) }
        var refusedCPU: UVCResult?
        for _ in 0..<guest.cpuHandles {
            let c = uv.secureCPU(guest.configuration, create: false)
            if !c.ok && refusedCPU == nil { refusedCPU = c }
        }
        guests[g]!.cpuHandles = 0
        if let refusedCPU { return PVCommandOutcome(errno: .EIO, uvc: refusedCPU) }
        let r = uv.destroyConfiguration(guest.configuration)
        guests[g]!.live = false
        if r.ok { kernel.user.changeProtectedCount(process: guest.process, by: -1) }
        let n = kernel.user.destroySecureRange(process: guest.process, start: 0, end: UserMM.taskSize, &uv)
        stats.destroyedPages += UInt64(n)
        return PVCommandOutcome(errno: r.ok ? nil : .EIO, uvc: r)
    }

    /// A protected vCPU's access to guest absolute address `gpa`: SIE runs it; a DAT fault
    /// (no host PTE, or a write to a read-only one) faults the VMM's page in
    /// (vcpu_dat_fault_handler); a non-secure storage access (PGM 0x3e) imports the page
    /// (kvm_s390_pv_convert_to_secure): -EINVAL is SIGSEGV to the VMM, -ENXIO a DAT fault
    /// with FOLL_WRITE, anything else re-enters SIE; a page that is another guest's secure
    /// storage (PGM 0x3d) is destroyed or exported (kvm_s390_pv_destroy_page). The access
    /// itself reads or writes the page. kvm-s390.c vcpu_post_run_handle_fault.
    public mutating func guestAccess(_ g: Int, vcpu: Int = 0, gpa: UInt64, write: Bool, kernel: inout Kernel, _ uv: inout Ultravisor) -> PVAccessOutcome {
        guard let guest = guests[g], guest.live else { return .notProtected }
        guard vcpu < guest.vcpus else { return .noVCPU }
        stats.accesses += 1
        let gfn = gpa >> pageShift, hva = guest.hva + (gfn << pageShift), pi = guest.process
        var forceWrite = write
        for _ in 0..<6 {
            let leaf = kernel.user.processes[pi].pageTable.lookup(VirtAddr(hva))
            guard let leaf, leaf.descriptor.attributes.contains(.present), !forceWrite || leaf.descriptor.attributes.contains(.writable) else {
                stats.datFaults += 1
                let r = kernel.user.handleFault(process: pi, addr: hva, write: forceWrite)
                kernel.user.takeS390Events(kernel.user.takeEvents(), &uv)
                guard r == .handled else { return .efault("the VMM's page could not be faulted in") }
                forceWrite = write
                continue
            }
            let pfn = leaf.translate(VirtAddr(hva)).rawValue >> pageShift
            if let s = uv.secure[pfn], !(s.shared && s.guest != guest.configuration) {
                if s.guest != guest.configuration || s.gfn != gfn {
                    // PGM 0x3d in the guest: kvm_s390_pv_destroy_page, destroy then export;
                    // both failing is SIGSEGV to the VMM.
                    if kernel.user.pvDestroyPage(pfn: pfn, &uv) == nil { continue }
                    stats.sigsegv += 1
                    return .violation
                }
                if write {
                    writes += 1
                    let token = gfn << 20 | writes
                    uv.setContent(pfn, token)
                    guests[g]!.expected[gfn] = token
                    kernel.user.markDirty(process: pi, addr: hva)  // the storage key's change bit, as the host PTE's dirty state
                    return .ok
                }
                if uv.contents(pfn) != guest.expected[gfn] ?? 0 {
                    stats.corruptReads += 1
                    return .corrupted
                }
                return .ok
            }
            // PGM 0x3e: not secure yet, import it.
            let r = kernel.user.makeHVASecure(process: pi, hva: hva, guest: guest.configuration, gfn: gfn, miscFeature: miscFeature, &uv)
            switch r.errno {
            case nil: stats.imports += 1
            case .EINVAL?:
                stats.sigsegv += 1
                return .sigsegv(r)
            case .ENXIO?: forceWrite = true
            default:
                stats.retries += 1
                return .retry(r)
            }
        }
        return .efault("the access did not complete")
    }
}
