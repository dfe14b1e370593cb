import Hardware
import HostKernel
import Hypervisor
import PageTables

/// MTE on an arm64 machine with `machine.mte: true`: the VMM's mappings with and without
/// PROT_MTE, tags stored and checked by the VMM and by a KVM guest, swap-out and the
/// swap-in a later access makes, in the form of mte_sync_tags the `host.mte-sync` slot
/// chooses. docs/mte.md.
public enum MTESteps {
    static let vma = Parameter("vma", .name, required: true, "the VMM mapping (named by mmap)")
    static let page = Parameter("page", .count(0...(1 << 20)), default: "0", "the page of the mapping")
    static let tag = Parameter("tag", .count(0...15), required: true, "the 4-bit tag")
    static let vm = Parameter("vm", .name, required: true, "the VM (named by kvm_create_vm)")
    static let gfn = Parameter("gfn", .address(0...(1 << 36)), required: true, "the guest frame")

    public static let all: [StepDefinition] = [mmap, mprotect, fork, userStoreTags, userLoad, swapWritepage, swapoff, kvmCreateVM, setUserMemoryRegion,
                                               guestStoreTags, guestLoad, copyTags, mteTags]

    /// Every MTE step needs MTE in the CPUs.
    static func step(_ name: String, _ summary: String, _ arguments: [Parameter],
                     _ body: @escaping @Sendable (StepArguments) -> @Sendable (inout Machine) throws(HostKernelError) -> any Outcome) -> StepDefinition {
        StepDefinition(name, summary, arguments) { a, ctx throws(ScenarioError) in
            guard ctx.kernel.config.mte else {
                throw a.fields.owner.error("\(name) needs MTE in the CPUs: give 'machine: {mte: true}'")
            }
            let run = body(a)
            return { m throws(HostKernelError) in
                let r = try run(&m)
                m.count(r)
                return r
            }
        }
    }

    static func vmaIndex(_ m: Machine, _ a: StepArguments) throws(HostKernelError) -> (Int, Int) {
        let name = a.text("vma")!
        guard let v = m.kernel.mte.vmaIndex(name) else { throw HostKernelError("no mapping '\(name)': mmap it first") }
        let p = Int(a.number("page"))
        guard p < m.kernel.mte.vmas[v].pages else { throw HostKernelError("page \(p) is past the \(m.kernel.mte.vmas[v].pages) pages of '\(name)'") }
        return (v, p)
    }

    static func vmIndex(_ m: Machine, _ a: StepArguments) throws(HostKernelError) -> Int {
        let name = a.text("vm")!
        guard let v = m.kvmMTE.vmIndex(name) else {
            throw HostKernelError("no VM '\(name)': kvm_create_vm it first")
        }
        return v
    }

    /// mmap: a VMA of the VMM; PROT_MTE needs VM_MTE_ALLOWED (anonymous or shmem), else -EINVAL.
    static let mmap = step("mmap", "a mapping in the VMM: anonymous, shmem or a file, private or shared, with or without PROT_MTE (arch_validate_flags)",
                           [vma, Parameter("pages", .count(1...(1 << 20)), default: "1", "its size in pages"),
                            Parameter("prot-mte", .bool, default: "false", "PROT_MTE (VM_MTE)"),
                            Parameter("backing", .choice(["anon", "shmem", "file"]), default: "anon", "what it maps (anon and shmem get VM_MTE_ALLOWED)"),
                            Parameter("shared", .bool, default: "false", "MAP_SHARED (VM_SHARED)")]) { a in
        { m throws(HostKernelError) in
            let name = a.text("vma")!
            if m.kernel.mte.vmaIndex(name) != nil { throw HostKernelError("a mapping '\(name)' exists already") }
            return m.kernel.mte.mmap(name: name, pages: Int(a.number("pages")), protMTE: a.bool("prot-mte"), backing: a.text("backing")!, shared: a.bool("shared"))
        }
    }

    /// The VMM stores a tag in every granule of a page (faulting it in).
    static let userStoreTags = step("user-store-tags", "the VMM writes a tag to every granule of a page (STG); ignored through a mapping without PROT_MTE",
                                    [vma, page, tag]) { a in
        { m throws(HostKernelError) in
            let (v, p) = try vmaIndex(m, a)
            let before = m.kernel.mte.vmas[v].ptes[p]
            let r = m.kernel.mte.userStoreTags(vma: v, page: p, tag: UInt8(a.number("tag")), ram: m.kernel.memory.ram)
            // A copy-on-write copy moved the page: the MMU notifier drops stage 2's old one.
            if m.kernel.mte.vmas[v].ptes[p] != before { m.kvmMTE.unmap(vma: v, page: p) }
            return r
        }
    }

    /// A tag-checked load by the VMM.
    static let userLoad = step("user-load", "the VMM loads from a page with a pointer tag: a tag check fault when the page's tag differs (PROT_MTE mappings only)",
                               [vma, page, tag]) { a in
        { m throws(HostKernelError) in
            let (v, p) = try vmaIndex(m, a)
            return m.kernel.mte.userLoad(vma: v, page: p, tag: UInt8(a.number("tag")), ram: m.kernel.memory.ram)
        }
    }

    /// swap_writepage: arch_prepare_to_swap saves the tags of a PG_mte_tagged page, the
    /// PTE becomes a swap entry, the MMU notifier unmaps stage 2, the page is freed.
    static let swapWritepage = step("swap_writepage", "the page is swapped out: arch_prepare_to_swap (mte_save_tags if PG_mte_tagged), the PTE becomes a swap entry, stage 2 unmapped, the page freed",
                                    [vma, page, Parameter("fail-alloc", .bool, default: "false", "the tag storage's allocation fails: -ENOMEM, the page stays")]) { a in
        { m throws(HostKernelError) in
            let (v, p) = try vmaIndex(m, a)
            let r = m.kernel.mte.swapOut(vma: v, page: p, failAllocation: a.bool("fail-alloc"))
            if r == .ok { m.kvmMTE.unmap(vma: v, page: p) }
            return r
        }
    }

    /// swapoff: every swapped-out page read back through unuse_pte, the saved tags freed.
    static let swapoff = step("swapoff", "swapoff: every swapped-out page comes back (unuse_pte → set_pte_at with the VMA's protection), then arch_swap_invalidate_area frees the saved tags", []) { _ in
        { m throws(HostKernelError) in
            ValueOutcome("\(m.kernel.mte.swapoff(ram: m.kernel.memory.ram)) pages back")
        }
    }

    static let kvmCreateVM = step("kvm_create_vm", "a KVM VM, with KVM_CAP_ARM_MTE enabled unless mte: false",
                                  [vm, Parameter("mte", .bool, default: "true", "KVM_ENABLE_CAP(KVM_CAP_ARM_MTE)")]) { a in
        { m throws(HostKernelError) in
            let name = a.text("vm")!
            if m.kvmMTE.vmIndex(name) != nil { throw HostKernelError("a VM '\(name)' exists already") }
            return m.kvmMTE.createVM(name, mte: a.bool("mte"), systemSupportsMTE: m.kernel.config.mte)
        }
    }

    static let setUserMemoryRegion = step("kvm_set_user_memory_region", "a memslot of the VM over a VMM mapping (kvm_arch_prepare_memory_region's MTE checks)",
                                          [vm, vma, Parameter("gfn", .address(0...(1 << 36)), default: "0", "the first guest frame")]) { a in
        { m throws(HostKernelError) in
            let v = try vmIndex(m, a), (area, _) = try vmaIndex(m, a)
            return m.kvmMTE.setUserMemoryRegion(vm: v, gfn: a.number("gfn"), vma: area, host: m.kernel.mte)
        }
    }

    /// The guest stores a tag over a page: a stage-2 fault first if it is not mapped.
    static let guestStoreTags = step("guest-store-tags", "the guest writes a tag to every granule of a page (a stage-2 fault through user_mem_abort first if unmapped)",
                                     [vm, gfn, tag]) { a in
        { m throws(HostKernelError) in
            let v = try vmIndex(m, a), gfn = a.number("gfn")
            let (r, pfn) = m.kvmMTE.userMemAbort(vm: v, gfn: gfn, write: true, host: &m.kernel.mte, ram: m.kernel.memory.ram)
            guard let pfn, r == .ok else { return r }
            if m.kvmMTE.vms[v].mte, let (vma, page) = m.kvmMTE.slot(vm: v, gfn: gfn) {
                m.kernel.mte.guestStoreTags(vma: vma, page: page, pfn: pfn, tag: UInt8(a.number("tag")))
            }
            return r
        }
    }

    /// A tag-checked load by the guest.
    static let guestLoad = step("guest-load", "the guest loads from a page with a pointer tag: a tag check fault when the page's tag differs",
                                [vm, gfn, tag]) { a in
        { m throws(HostKernelError) in
            let v = try vmIndex(m, a), gfn = a.number("gfn")
            let (r, pfn) = m.kvmMTE.userMemAbort(vm: v, gfn: gfn, host: &m.kernel.mte, ram: m.kernel.memory.ram)
            guard let pfn, r == .ok else { return r }
            guard m.kvmMTE.vms[v].mte else { return MTEAccess.ok }
            if m.kernel.mte.tags.check(pa: pfn << pageShift, logicalTag: UInt8(a.number("tag"))) { return MTEAccess.ok }
            m.kernel.mte.countTagCheckFault()
            return MTEAccess.tagCheckFault(found: m.kernel.mte.tags.page(pfn)[0])
        }
    }

    /// mprotect of a whole mapping.
    static let mprotect = step("mprotect", "mprotect of a whole VMM mapping: add PROT_MTE (its PTEs rewritten tagged, -EINVAL without VM_MTE_ALLOWED), or PROT_NONE (stage 2 unmapped; the guest's next access is -EFAULT)",
                               [vma, Parameter("prot-mte", .bool, default: "false", "add PROT_MTE"),
                                Parameter("none", .bool, default: "false", "PROT_NONE (false: access back)")]) { a in
        { m throws(HostKernelError) in
            let (v, _) = try vmaIndex(m, a)
            let r = m.kernel.mte.mprotect(vma: v, protMTE: a.bool("prot-mte"), protNone: a.bool("none"))
            if r == .ok { m.kvmMTE.unmap(vma: v) }
            return r
        }
    }

    /// fork: the VMM's private pages become copy-on-write; the MMU notifier drops stage 2.
    static let fork = step("fork", "the VMM forks: its private pages are shared copy-on-write with the child (the next write copies them, with their tags if PG_mte_tagged)", []) { _ in
        { m throws(HostKernelError) in
            m.kernel.mte.fork()
            for v in m.kernel.mte.vmas.indices where !m.kernel.mte.vmas[v].shared { m.kvmMTE.unmap(vma: v) }
            return OK()
        }
    }

    /// KVM_ARM_MTE_COPY_TAGS.
    static let copyTags = step("kvm_arm_mte_copy_tags", "KVM_ARM_MTE_COPY_TAGS: the VMM reads (flags 1, KVM_ARM_TAGS_FROM_GUEST) or writes (flags 0) a guest range's tags without a PROT_MTE mapping",
                               [vm, Parameter("guest_ipa", .address(), required: true, "the guest physical address (page-aligned)"),
                                Parameter("length", .address(), required: true, "bytes of guest memory (page-aligned)"),
                                Parameter("flags", .address(), default: "0", "0 (TO_GUEST) or 1 (FROM_GUEST); other bits are -EINVAL"),
                                Parameter("reserved", .address(), default: "0", "reserved[0] | reserved[1]; not zero is -EINVAL"),
                                Parameter("tag", .count(0...15), default: "0", "TO_GUEST: the tag the buffer holds for every granule"),
                                Parameter("dirty-logging", .bool, default: "false", "a memslot logs dirty pages: TO_GUEST is -EBUSY")]) { a in
        { m throws(HostKernelError) in
            let v = try vmIndex(m, a)
            let (r, pages) = m.kvmMTE.copyTags(vm: v, guestIPA: a.number("guest_ipa"), length: a.number("length"), flags: a.number("flags"),
                                               reserved: a.number("reserved"), tag: UInt8(a.number("tag")), dirtyLogging: a.bool("dirty-logging"),
                                               host: &m.kernel.mte, ram: m.kernel.memory.ram)
            guard r == .ok, !pages.isEmpty else { return r }
            return AnnotatedOutcome(r, notes: pages.prefix(4).map { "tags \($0.summary)" } + (pages.count > 4 ? ["…"] : []))
        }
    }

    /// What a page holds: its tags and PG_mte_tagged, or its swap entry and saved tags.
    static let mteTags = step("mte-tags", "a page's tags and PG_mte_tagged, or its swap entry and the tags saved for it", [vma, page]) { a in
        { m throws(HostKernelError) in
            let (v, p) = try vmaIndex(m, a)
            let host = m.kernel.mte
            switch host.vmas[v].ptes[p] {
            case .none: return ValueOutcome("not present")
            case .present(let pfn):
                return ValueOutcome("pfn \(hex(pfn)): tags \(host.tags.page(pfn).summary)" + (host.pageMTETagged(pfn) ? ", PG_mte_tagged" : ""))
            case .swap(let e):
                return ValueOutcome("swap entry \(e): " + (host.saved[e].map { "saved tags \($0.summary)" } ?? "no tags saved"))
            }
        }
    }

    /// `host.mte-sync`: the form of mte_sync_tags.
    public static let syncSlot = PolicySlot(
        section: .host, key: "mte-sync",
        summary: "the form of mte_sync_tags (set_pte_at) and its swap restore; arch/arm64/kernel/mte.c",
        policies: MTESyncForm.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: MTESyncForm.v6_1Lock.rawValue
    ) { name, targets in targets.host.mteSync = MTESyncForm(rawValue: name)! }
}
