import Hardware
import HostKernel
import Hypervisor
import PageTables

/// MTE workloads: a guest tagging its memory while the host swaps it out and back, and a
/// VMM forking while the guest runs. Each checks the guest's tags as it goes (tag-checked
/// loads with the tag it last wrote), so `mte_tags_lost` and `mte_tag_check_faults` count
/// what each form of mte_sync_tags loses.
enum MTEWorkloads {
    static let vm = Parameter("vm", .name, required: true, "the VM (kvm_create_vm, with a memslot)")

    static let all = [swapPressure, forkWhileRunning]

    static func workload(_ name: String, _ summary: String, _ body: @escaping @Sendable (inout Machine, Int, Int, UInt64) throws(HostKernelError) -> Void) -> WorkloadDefinition {
        WorkloadDefinition(name, summary, [Workloads.operations, vm]) { a, ctx throws(ScenarioError) in
            guard ctx.kernel.config.mte else { throw a.fields.owner.error("workload \(name) needs MTE in the CPUs: give 'machine: {mte: true}'") }
            let ops = a.number("operations"), name = a.text("vm")!
            return { m throws(HostKernelError) in
                guard let v = m.kvmMTE.vmIndex(name) else { throw HostKernelError("no VM '\(name)': kvm_create_vm it first") }
                let frames = m.kvmMTE.vms[v].slots.reduce(0) { $0 + $1.pages }
                guard frames > 0 else { throw HostKernelError("VM '\(name)' has no memslot: kvm_set_user_memory_region first") }
                for i in 0..<ops {
                    try body(&m, v, frames, i)
                    m.counters.operations += 1
                    m.tick(i + 1, ops)
                }
                return WorkloadTally()
            }
        }
    }

    /// The n-th guest frame of the VM's memslots.
    static func gfn(_ m: Machine, _ v: Int, _ n: Int) -> UInt64 {
        var n = n
        for s in m.kvmMTE.vms[v].slots {
            if n < s.pages { return s.gfn + UInt64(n) }
            n -= s.pages
        }
        return 0
    }

    /// The guest's step: tag a random frame, or load one it tagged with its tag.
    static func guestStep(_ m: inout Machine, _ v: Int, _ frames: Int) {
        let f = gfn(m, v, Int(m.rng.below(UInt64(frames))))
        guard let (vma, page) = m.kvmMTE.slot(vm: v, gfn: f) else { return }
        if m.rng.below(2) == 0 {
            let tag = UInt8(1 + m.rng.below(15))
            let (r, pfn) = m.kvmMTE.userMemAbort(vm: v, gfn: f, write: true, host: &m.kernel.mte, ram: m.kernel.memory.ram)
            if r == .ok, let pfn { m.kernel.mte.guestStoreTags(vma: vma, page: page, pfn: pfn, tag: tag) }
        } else if let want = m.kernel.mte.expectedTags(vma: vma, page: page) {
            let (r, pfn) = m.kvmMTE.userMemAbort(vm: v, gfn: f, host: &m.kernel.mte, ram: m.kernel.memory.ram)
            if r == .ok, let pfn, !m.kernel.mte.tags.check(pa: pfn << pageShift, logicalTag: want[0]) { m.kernel.mte.countTagCheckFault() }
        }
    }

    static let swapPressure = workload(
        "mte-swap-pressure", "the guest tags random pages and loads them back with their tags while the host swaps random guest pages out (swap_writepage) and the guest's faults bring them back"
    ) { m, v, frames, _ throws(HostKernelError) in
        if m.rng.below(3) == 0 {
            let f = gfn(m, v, Int(m.rng.below(UInt64(frames))))
            if let (vma, page) = m.kvmMTE.slot(vm: v, gfn: f), case .present = m.kernel.mte.vmas[vma].ptes[page],
               m.kernel.mte.swapOut(vma: vma, page: page) == .ok {
                m.kvmMTE.unmap(vma: vma, page: page)
            }
        } else {
            guestStep(&m, v, frames)
        }
    }

    static let forkWhileRunning = workload(
        "mte-fork", "the VMM forks now and then (its private pages copy-on-write) while the guest tags and loads random pages"
    ) { m, v, frames, i throws(HostKernelError) in
        if i % 64 == 0 {
            m.kernel.mte.fork()
            for s in m.kvmMTE.vms[v].slots { m.kvmMTE.unmap(vma: s.vma) }
        }
        guestStep(&m, v, frames)
    }
}
