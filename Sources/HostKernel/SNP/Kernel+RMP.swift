import Hardware
import PageTables

extension Kernel {
    /// Linux rmp_make_private / rmp_make_shared (arch/x86/virt/svm/sev.c): the configured
    /// direct-map policy first (rmpupdate: `if (adjust_direct_map(pfn, level)) return
    /// -EFAULT;`), then RMPUPDATE. Linux retries FAIL_OVERLAP as transient; in the model
    /// nothing else runs concurrently, so any failing status is final: -EFAULT, as the kernel
    /// returns after dumping the entry.
    public mutating func rmpUpdate(_ rmp: inout RMP, pfn: UInt64, _ update: RMPUpdate) -> (KernelStatus, SNPStatus?) {
        let p = config.directMapPolicy.policy
        if p.beforeOwnerChange(&self, pfn: pfn, size: update.size, toGuest: update.assigned) != nil { return (.error(.EFAULT), nil) }
        let status = rmp.rmpupdate(spa: pfn << pageShift, update)
        guard status == .success else {
            // pr_err in rmpupdate (then dump_rmpentry and dump_stack); pg_level 1 = 4K, 2 = 2M.
            log("RMPUPDATE failed for PFN \(String(pfn, radix: 16)), pg_level: \(update.size == .size2M ? 2 : 1), ret: \(status.rawValue)")
            return (.error(.EFAULT), status)
        }
        if update.assigned { faults.pagesGiven += 1 } else { faults.pagesReturned += 1 }
        p.afterOwnerChange(&self, ownership: rmp, pfn: pfn, size: update.size, toGuest: update.assigned)
        return (.ok, status)
    }
}
