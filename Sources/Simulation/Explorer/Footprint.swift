import GuestKernel
import Hardware
import HostKernel
import PageTables

/// What a thread's atomic step can change besides the MTE host and KVM's stage 2: the
/// translation of the addresses it names (the page-table leaf and every CPU's TLB entry) and
/// the host kernel's and the platform's counters. The explorer's state key folds these in, so
/// pruning costs O(addresses × CPUs) per state, not the whole machine.
public enum Footprint: Hashable, Sendable {
    /// A host kernel virtual address.
    case hostVA(UInt64)
    /// A host physical address, through the direct map where it has one.
    case hostPA(UInt64)
    /// A guest physical address, through that guest kernel's direct map.
    case guestGPA(guest: String, gpa: UInt64)

    /// The footprint of a step from its echoed arguments: `guest` with `gpa`, `addr`, `pa`.
    static func of(_ arguments: [(String, String)]) -> [Footprint] {
        func value(_ k: String) -> UInt64? {
            guard let t = arguments.first(where: { $0.0 == k })?.1 else { return nil }
            return t.hasPrefix("0x") ? UInt64(t.dropFirst(2), radix: 16) : UInt64(t)
        }
        if let g = arguments.first(where: { $0.0 == "guest" })?.1, let gpa = value("gpa") { return [.guestGPA(guest: g, gpa: gpa)] }
        if let a = value("addr") { return [.hostVA(a)] }
        if let pa = value("pa") { return [.hostPA(pa)] }
        return []
    }
}

extension Machine {
    /// The digest of the state at `footprint`'s addresses, with the platform's counters.
    func footprintDigest(_ footprint: [Footprint]) -> UInt64 {
        var d: UInt64 = 0
        for f in footprint {
            switch f {
            case .hostVA(let va):
                d = Digest.combine(d, Self.translationDigest(kernel, va: va))
            case .hostPA(let pa):
                d = Digest.combine(d, platform.hostFootprintDigest(pa: pa))
                guard kernel.hasDirectMapAddress(pa) else { continue }
                d = Digest.combine(d, Self.translationDigest(kernel, va: kernel.va(PhysAddr(pa)).rawValue))
            case .guestGPA(let name, let gpa):
                guard let i = guests.firstIndex(where: { $0.name == name }), i < guestKernels.count else { continue }
                let k = guestKernels[i].kernel, page = gpa & ~(pageBytes - 1)
                // The word's page and the next (load_unaligned_zeropad reads across).
                for p in [page, page + pageBytes] where p < guests[i].memory {
                    d = Digest.combine(d, Self.translationDigest(k, va: k.va(PhysAddr(p)).rawValue))
                    d = Digest.combine(d, platform.footprintDigest(guest: i, gpa: p))
                }
            }
        }
        // The counters the asserts read: the host kernel's (faults, crashes, flushes) and the platform's.
        for (_, v) in Kernel.metrics(kernel.config.isa).values(kernel) { d = Digest.combine(d, v) }
        for (_, v) in platform.metrics(kernel: kernel) { d = Digest.combine(d, v) }
        return d
    }

    /// The leaf mapping `va` and each CPU's TLB entry for it.
    static func translationDigest(_ k: Kernel, va: UInt64) -> UInt64 {
        var d = Digest.of(k.pageTable.lookup(VirtAddr(va)))
        for cpu in 0..<k.config.cpus { d = Digest.combine(d, Digest.of(k.tlbEntry(cpu: cpu, va))) }
        return d
    }
}
