import Hardware
import HostKernel
import PageTables

/// Guest memory conversions driven from the host side, the way KVM's guest_memfd hooks
/// reach the RMP: a stand-in until the Hypervisor layer models memslots, guest_memfd folios
/// and page-state-change exits. Sources: arch/x86/kvm/svm/sev.c sev_gmem_prepare (2M only
/// when the whole 2M range is unassigned and the backing allows it, else 4K) and
/// sev_gmem_invalidate (a partly covered 2M entry is PSMASHed first, then made shared per
/// 4K); the guest side from arch/x86/coco/sev (PVALIDATE 2M first, 4K on SIZEMISMATCH).
extension Machine {
    /// Makes guest page `gfn` private (2M when `size` says so) and has the guest validate it.
    mutating func guestMakePrivate(_ g: GuestSpec, gfn: UInt64, size: PageSize) -> String {
        let gpa = gfn << pageShift
        let spa = g.spa(gpa)
        var use = size
        if size == .size2M && (spa & (PageSize.size2M.bytes - 1) != 0 || rmp!.regionHasAssigned(spa >> pageShift)) { use = .size4K }
        if use == .size4K, rmp![spa >> pageShift].assigned { return "ok" }
        let (status, _) = kernel.rmpUpdate(&rmp!, pfn: spa >> pageShift, RMPUpdate(gpa: gpa, assigned: true, size: use, asid: g.asid))
        operations += 1
        guard status == .ok else { errors += 1; return status.description }
        if rmp!.pvalidate(g.context(gpa: gpa, vmpl: 0), size: use, validate: true) == .status(.failSizeMismatch) {
            _ = rmp!.pvalidate(g.context(gpa: gpa, vmpl: 0), size: .size4K, validate: true)
        }
        return "ok"
    }

    /// Makes guest page `gfn` shared: the guest rescinds validation, then the host PSMASHes a
    /// covering 2M RMP page and returns the 4K page to the hypervisor.
    mutating func guestMakeShared(_ g: GuestSpec, gfn: UInt64) -> String {
        let gpa = gfn << pageShift
        let spa = g.spa(gpa)
        guard rmp![spa >> pageShift].assigned else { return "ok" }
        _ = rmp!.pvalidate(g.context(gpa: gpa, vmpl: 0), size: .size4K, validate: false)
        if rmp!.largeEntry(spa >> pageShift).isLarge {
            _ = rmp!.psmash(spa: spa & ~(PageSize.size2M.bytes - 1))
            _ = rmp!.pvalidate(g.context(gpa: gpa, vmpl: 0), size: .size4K, validate: false)
        }
        let (status, _) = kernel.rmpUpdate(&rmp!, pfn: spa >> pageShift, RMPUpdate(assigned: false))
        operations += 1
        if status != .ok { errors += 1 }
        return status.description
    }

    /// Launch and boot: all guest memory private, in 2M units where the nested mapping and
    /// placement allow, and validated by the guest (accept_memory in 2M units).
    mutating func guestBoot(_ g: GuestSpec) -> String {
        var gfn: UInt64 = 0
        let pages = g.memory >> pageShift
        var first: String?
        while gfn < pages {
            let big = g.npt == .size2M && gfn & 511 == 0 && gfn + 512 <= pages
            let r = guestMakePrivate(g, gfn: gfn, size: big ? .size2M : .size4K)
            if r != "ok" && first == nil { first = r }
            gfn += big ? 512 : 1
        }
        return first ?? "ok"
    }

    /// Returns all guest memory to the hypervisor (VM teardown): 2M pages at 2M.
    mutating func guestTeardown(_ g: GuestSpec) -> String {
        var gfn: UInt64 = 0
        let pages = g.memory >> pageShift
        var first: String?
        while gfn < pages {
            let spa = g.spa(gfn << pageShift)
            let e = rmp!.largeEntry(spa >> pageShift)
            if spa & (PageSize.size2M.bytes - 1) == 0 && e.assigned && e.isLarge && gfn + 512 <= pages {
                let (status, _) = kernel.rmpUpdate(&rmp!, pfn: spa >> pageShift, RMPUpdate(assigned: false, size: .size2M))
                operations += 1
                if status != .ok { errors += 1; first = first ?? status.description }
                gfn += 512
            } else {
                let r = guestMakeShared(g, gfn: gfn)
                if r != "ok" { first = first ?? r }
                gfn += 1
            }
        }
        return first ?? "ok"
    }
}
