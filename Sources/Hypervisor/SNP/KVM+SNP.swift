import Hardware
import HostKernel
import PageTables

/// KVM's generic paths with the SEV-SNP backend, as concrete entry points: calls from other
/// modules then run code specialized for `SNPBackend` (the generic bodies are specialized
/// only inside this module).
extension KVM where Backend == SNPBackend {
    /// PVALIDATE of `gfn` as the guest's vCPU at `vmpl` executes it, through `guestStep`
    /// (gmem fault → prepare, the stage-2 leaf's size as the NPT size, RMP #NPF → PSMASH).
    public mutating func pvalidate(_ i: Int, gfn: UInt64, size: PageSize, validate: Bool, vmpl: Int = 0, kernel: inout Kernel, rmp: inout RMP) -> GuestStepResult {
        let asid = vms[i].config.id, spa = vms[i].config.spa(gfn)
        return guestStep(i, gfn: gfn, private: true, kernel: &kernel, hw: &rmp) { rmp, level in
            rmp.pvalidate(GuestContext(asid: asid, vmpl: vmpl, gpa: gfn << pageShift, spa: spa, nptSize: level), size: size, validate: validate)
        }
    }

    /// A guest access at `gpa` through KVM, with the path it took as notes.
    public mutating func access(_ i: Int, gpa: UInt64, write: Bool, private isPrivate: Bool, kernel: inout Kernel, rmp: inout RMP) -> AnnotatedOutcome {
        let c = vms[i].config
        let gfn = gpa >> pageShift
        return guestOperation(i, gfn: gfn, private: isPrivate, kernel: &kernel, hw: &rmp, retryNote: "RMP #NPF: PSMASH") { rmp, level in
            rmp.guestAccess(GuestContext(asid: c.id, vmpl: 0, gpa: gpa & ~(pageBytes - 1), spa: c.spa(gfn), nptSize: level), write: write, encrypted: isPrivate)
        }
    }

    /// VM teardown (KVM.destroy) with the SNP backend.
    public mutating func teardown(_ i: Int, kernel: inout Kernel, rmp: inout RMP) -> KernelStatus { destroy(i, kernel: &kernel, hw: &rmp) }
}
