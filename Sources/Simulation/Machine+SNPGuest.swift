import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SNP guest kernel's side of conversions, driving KVM (arch/x86/coco/sev/core.c and
/// arch/x86/mm/mem_encrypt_amd.c): to make pages shared the guest first rescinds validation
/// (PVALIDATE, 2M for 2M-aligned runs of at least 2M, 4K otherwise and on
/// FAIL_SIZEMISMATCH), then asks for the change with a GHCB page-state change; to make them
/// private it asks first and validates after.
extension Machine {
    /// PVALIDATE `gfns` through KVM, 2M where it can, falling back to 4K on FAIL_SIZEMISMATCH.
    mutating func guestPvalidate(_ i: Int, gfns: Range<UInt64>, validate: Bool) -> String {
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            let big = gfn & 511 == 0 && gfn + 512 <= gfns.upperBound
            let r = kvmPvalidate(i, gfn: gfn, size: big ? .size2M : .size4K, validate: validate)
            if big && r.outcome == .status(.failSizeMismatch) {
                for g in gfn..<gfn + 512 {
                    let small = kvmPvalidate(i, gfn: g, size: .size4K, validate: validate)
                    if !small.succeeded { return small.description }
                }
            } else if !r.succeeded {
                return r.description
            }
            gfn += big ? 512 : 1
        }
        return "ok"
    }

    mutating func kvmPvalidate(_ i: Int, gfn: UInt64, size: PageSize, validate: Bool) -> KVM.GuestStepResult {
        operations += 1
        return kvm!.guestStep(i, gfn: gfn, private: true, kernel: &kernel, rmp: &rmp!) { rmp, ctx in
            rmp.pvalidate(ctx, size: size, validate: validate)
        }
    }

    /// A GHCB page-state change for `gfns`, 2M entries where aligned.
    mutating func guestPSC(_ i: Int, gfns: Range<UInt64>, toPrivate: Bool) -> String {
        var entries: [PSCEntry] = []
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            let big = gfn & 511 == 0 && gfn + 512 <= gfns.upperBound
            entries.append(PSCEntry(gfn: gfn, operation: toPrivate ? 1 : 2, size2M: big))
            gfn += big ? 512 : 1
        }
        // The guest sends at most 64 entries a request (Linux VMGEXIT_PSC_MAX_ENTRY).
        var start = 0
        while start < entries.count {
            let chunk = Array(entries[start..<min(start + 64, entries.count)])
            let (code, _) = kvm!.handlePSC(i, PSCRequest(endEntry: chunk.count - 1, entries: chunk), kernel: &kernel, rmp: &rmp!)
            operations += 1
            if code != 0 { errors += 1; return "PSC error " + hex(code) }
            start += 64
        }
        return "ok"
    }

    /// The SNP guest's set_memory_decrypted: rescind validation, then PSC to shared, for
    /// each run of pages that is private now (the guest knows which of its pages are shared).
    mutating func guestSetShared(_ i: Int, gfns: Range<UInt64>) -> String {
        for run in runs(i, gfns, private: true) {
            let r = guestPvalidate(i, gfns: run, validate: false)
            let s = r == "ok" ? guestPSC(i, gfns: run, toPrivate: false) : r
            if s != "ok" { return s }
        }
        return "ok"
    }

    /// The SNP guest's set_memory_encrypted: PSC to private, then validate (the first
    /// PVALIDATE takes a gmem fault, and KVM prepares the page), for each run now shared.
    mutating func guestSetPrivate(_ i: Int, gfns: Range<UInt64>) -> String {
        for run in runs(i, gfns, private: false) {
            let r = guestPSC(i, gfns: run, toPrivate: true)
            let s = r == "ok" ? guestPvalidate(i, gfns: run, validate: true) : r
            if s != "ok" { return s }
        }
        return "ok"
    }

    /// The maximal runs inside `gfns` whose attribute is `private`.
    func runs(_ i: Int, _ gfns: Range<UInt64>, private isPrivate: Bool) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        var start: UInt64?
        for gfn in gfns {
            let match = kvm!.vms[i].isPrivate(gfn) == isPrivate
            if match && start == nil { start = gfn }
            if !match, let s = start { out.append(s..<gfn); start = nil }
        }
        if let s = start { out.append(s..<gfns.upperBound) }
        return out
    }

    /// One page-state change of guest `i`'s page `gfn` as the guest kernel makes it
    /// (set_memory_encrypted or set_memory_decrypted of one page), through KVM.
    public mutating func pageStateChange(guest i: Int, gfn: UInt64, toPrivate: Bool) -> String {
        toPrivate ? guestSetPrivate(i, gfns: gfn..<gfn + 1) : guestSetShared(i, gfns: gfn..<gfn + 1)
    }

    /// Whether guest `i`'s page `gfn` is private now.
    public func isPrivate(guest i: Int, gfn: UInt64) -> Bool { kvm!.vms[i].isPrivate(gfn) }

    /// Launch, then accept all memory in 2M units (accept_memory).
    public mutating func guestBoot(_ i: Int) -> String {
        let status = kvm!.launch(i, imagePages: 0, kernel: &kernel, rmp: &rmp!)
        guard status == .ok else { return status.description }
        return guestPvalidate(i, gfns: 0..<kvm!.vms[i].config.pages, validate: true)
    }

    /// The KVM index of a guest.
    func guestIndex(_ g: GuestSpec) -> Int { guests.firstIndex { $0.name == g.name }! }

    /// Teardown, then create the VM again (not launched).
    mutating func guestRecreate(_ i: Int) -> String {
        let status = kvm!.destroy(i, kernel: &kernel, rmp: &rmp!)
        guard status == .ok else { return status.description }
        kvm!.recreate(i)
        return "ok"
    }
}
