import Hardware
import HostKernel
import PageTables

/// A confidential guest's own kernel: its direct map, built at boot over its guest-physical
/// memory and changed by the same change_page_attr engine as the host's. GuestKernel imports
/// HostKernel because change_page_attr is kernel code host and guest share (Linux builds one
/// arch/x86/mm/pat/set_memory.c into both); only the platform's hooks differ. The
/// architecture's conversion protocol (GuestKernel/SNP) runs inside those hooks, and every
/// request it makes of the host leaves as an exit value the machine hands to the hypervisor.
public struct GuestKernel: Sendable {
    public let name: String
    /// The guest's memory-management state, as the host's: its page table with the direct
    /// map, direct_pages_count, the CPA counters.
    public internal(set) var kernel: Kernel
    /// The EFI unaccepted-memory table and the page allocator's acceptance, once the guest
    /// booted with memory its firmware left unaccepted.
    public internal(set) var acceptance: GuestAllocator?

    /// Boots the guest kernel over `memory` bytes of guest-physical memory, all of it RAM (the
    /// one guest_memfd memslot KVM gives it; the ISA range is mapped whatever it holds, as on
    /// the host). Private memory is mapped with the encryption bit, as PAGE_KERNEL carries
    /// sme_me_mask in an SEV guest.
    public init(name: String, memory: UInt64, config: KernelConfig = KernelConfig(memEncrypt: true, smeCoherent: true)) throws(HostKernelError) {
        self.name = name
        do {
            let ram = try PhysicalMemory(entries: [E820Entry(start: 0, last: memory - 1, type: .usable)])
            kernel = try Kernel(memory: ram, config: config, reserveTables: false)
        } catch let e as HostKernelError {
            throw e
        } catch {
            throw HostKernelError("guest \(name): \(error)")
        }
    }

    /// The guest's direct-map address of a guest frame.
    /// Notes (or forgets) the regions of the guest kernel's page table each change touches.
    public mutating func trackChanges(_ on: Bool = true) { kernel.trackChanges(on) }
    public mutating func resetChanges() { kernel.resetChanges() }

    @inlinable public func va(gfn: UInt64) -> UInt64 { kernel.va(PhysAddr(gfn << pageShift)).rawValue }

    /// The guest kernel's own translation of `gpa` through its direct map on vCPU `vcpu`:
    /// the vCPU's TLB, else the walk (cached when present). Nil when the guest's mapping is
    /// not present (the guest takes a #PF). Its attributes carry the C-bit the access uses.
    public mutating func translate(gpa: UInt64, vcpu: Int) -> TLBEntry? {
        kernel.translate(cpu: vcpu, kernel.va(PhysAddr(gpa)).rawValue)
    }

    /// vmap() in the guest's kernel: `pages` pages from guest physical `gpa` in its vmalloc
    /// space; the address.
    public mutating func vmap(gpa: UInt64, pages: Int) throws(HostKernelError) -> UInt64 {
        try kernel.vmap(PhysAddr(gpa), pages: pages).rawValue
    }

    /// The guest kernel's translation of its own virtual address `va` on vCPU `vcpu` (a
    /// vmalloc address, say): nil when not present.
    public mutating func translate(va: UInt64, vcpu: Int) -> TLBEntry? { kernel.translate(cpu: vcpu, va) }

    /// The direct-map PTE of `gfn` changed without a flush (one action of a conversion the
    /// explorer interleaves); the vCPUs' TLBs keep the old entry until `flush(gfn:)`. Linux
    /// set_memory.c __change_page_attr_set_clr, before its cpa_flush.
    public mutating func writePTE(gfn: UInt64, set: Attributes, clear: Attributes) -> KernelStatus {
        (try? kernel.changePageAttrNoFlush(va(gfn: gfn), numpages: 1, set: set, clear: clear)) ?? .error(.EINVAL)
    }

    /// cpa_flush's TLB part for `gfn`'s direct-map page: every vCPU drops its entry.
    public mutating func flush(gfn: UInt64) { kernel.flushTLBKernelRange(va(gfn: gfn), pages: 1) }

    /// Whether the guest maps `gfn` encrypted (private) in its direct map.
    @inlinable @inline(__always) public func isEncrypted(gfn: UInt64) -> Bool {
        guard let a = kernel.directMapLeaf(PhysAddr(gfn << pageShift))?.attributes else { return false }
        return kernel.config.ccSharedBit ? !a.contains(.shared) : a.contains(.encrypted)
    }

    /// The maximal runs inside `gfns` whose direct-map encryption is `encrypted`: the guest
    /// converts only pages that are not in the target state already.
    public func runs(_ gfns: Range<UInt64>, encrypted: Bool) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        var start: UInt64?
        for gfn in gfns {
            let match = isEncrypted(gfn: gfn) == encrypted
            if match && start == nil { start = gfn }
            if !match, let s = start { out.append(s..<gfn); start = nil }
        }
        if let s = start { out.append(s..<gfns.upperBound) }
        return out
    }
}

extension GuestKernel {
    /// Runs `body` on the guest's kernel (its user processes live there).
    public mutating func withKernel<R>(_ body: (inout Kernel) -> R) -> R { body(&kernel) }

    /// Runs a set_memory_* operation on the guest's own direct map, with no platform hooks.
    public mutating func apply(_ op: KernelOperation) throws(HostKernelError) -> any Outcome { try op.apply(to: &kernel) }
}

/// A guest access whose own mapping is not present: the guest kernel takes a #PF (and, in
/// kernel context with no fixup, oopses). No exit reaches the host.
public struct GuestPageFault: Outcome, Hashable {
    public init() {}
    public var kind: OutcomeKind { .fault }
    public var description: String { "guest #PF(not-present)" }
}
