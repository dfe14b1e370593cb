import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SNP guest's operations as the machine runs them: the guest kernel (GuestKernel/SNP)
/// executes PVALIDATE and VMGEXIT, and the machine hands each to the hardware and KVM, which
/// handle the gmem faults, #NPFs and page-state changes and let the guest resume.
extension SNPPlatform {
    /// PVALIDATE of guest `i`'s `gfn` as its vCPU runs it, through KVM (gmem fault → prepare,
    /// RMP #NPF → PSMASH and retry).
    mutating func pvalidate(_ i: Int, gfn: UInt64, size: PageSize, validate: Bool, vmpl: Int = 0, kernel: inout Kernel) -> KVM<SNPBackend>.GuestStepResult {
        kvm.pvalidate(i, gfn: gfn, size: size, validate: validate, vmpl: vmpl, kernel: &kernel, rmp: &rmp)
    }

    /// The guest's PVALIDATE and VMGEXIT(PSC) for guest `i`, each counted as an operation,
    /// and as an error when KVM answers with an errno or refuses the page-state change.
    static func guestCalls<R>(
        _ p: inout SNPPlatform, _ i: Int, _ m: inout Machine, _ body: (inout GuestKernel, SNPPvalidate, SNPVMGEXIT) -> R
    ) -> R {
        guestCalls(&p, i, &m.kernel, &m.counters, &m.guestKernels[i], body)
    }

    static func guestCalls<R>(
        _ p: inout SNPPlatform, _ i: Int, _ kernel: inout Kernel, _ counters: inout RunCounters, _ guest: inout GuestKernel,
        _ body: (inout GuestKernel, SNPPvalidate, SNPVMGEXIT) -> R
    ) -> R {
        // The GHCB's shared buffer: every request of the call is written into it, in place.
        var ghcb = PSCRequest(endEntry: -1, entries: [])
        return body(&guest, { gfn, size, validate in
            counters.operations += 1
            let r = p.pvalidate(i, gfn: gfn, size: size, validate: validate, kernel: &kernel)
            if r.succeeded { return .success }
            if r.isError { counters.errors += 1 }
            return PvalidateResult(failure: r, sizeMismatch: r.stopped == nil && r.outcome == .status(.failSizeMismatch))
        }, { write in
            counters.operations += 1
            write(&ghcb)
            let code = p.kvm.handlePSC(i, &ghcb, kernel: &kernel, rmp: &p.rmp)
            if code != 0 { counters.errors += 1 }
            return code
        })
    }

    /// set_memory_encrypted/decrypted in guest `i`'s kernel with the SNP protocol. Its
    /// PVALIDATEs and page-state changes count as operations (and errors) themselves.
    public static func guestSetMemory(_ m: inout Machine, guest i: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        m.withPlatform(SNPPlatform.self) { p, m in
            guestCalls(&p, i, &m) { guest, pvalidate, vmgexit in
                guest.snpSetMemory(gfns, encrypt: encrypt, pvalidate: pvalidate, vmgexit: vmgexit)
            }
        }
    }

    /// Launch, then accept all memory in 2M units (accept_memory → PVALIDATE).
    static func guestBoot(_ p: inout SNPPlatform, _ m: inout Machine, _ i: Int) -> any Outcome {
        let status = p.kvm.launch(i, imagePages: 0, kernel: &m.kernel, rmp: &p.rmp)
        guard status == .ok else { return status }
        let pages = p.kvm.vms[i].config.pages
        return guestCalls(&p, i, &m) { _, pvalidate, _ in
            GuestKernel.snpPvalidate(0..<pages, validate: true, pvalidate: pvalidate)
        }
    }

    /// Teardown, then create the VM and its guest kernel again (not launched).
    static func guestRecreate(_ p: inout SNPPlatform, _ m: inout Machine, _ i: Int) -> any Outcome {
        let status = p.kvm.teardown(i, kernel: &m.kernel, rmp: &p.rmp)
        guard status == .ok else { return status }
        p.kvm.recreate(i)
        m.rebootGuestKernel(i)
        return OK()
    }
}
