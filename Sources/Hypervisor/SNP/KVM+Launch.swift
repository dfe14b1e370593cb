import Hardware
import HostKernel
import PageTables

extension KVM where Backend == SNPBackend {
    /// The GPA a VMSA is assigned with in the RMP: INITIAL_VMSA_GPA, arch/x86/kvm/svm/sev.c.
    public static let initialVMSAGPA: UInt64 = 0xFFFF_FFFF_F000

    /// SNP_LAUNCH_START/UPDATE/FINISH (sev.c snp_launch_start, snp_launch_update,
    /// snp_launch_update_vmsa, snp_launch_finish): a firmware context page
    /// (rmp_mark_pages_firmware: private, ASID 0, immutable); the first `imagePages` of guest
    /// memory populated through guest_memfd (kvm_gmem_populate → rmp_make_private 4K,
    /// immutable: Pre-Guest; the firmware measures and validates them); one VMSA per vCPU,
    /// never 2M-aligned; then LAUNCH_FINISH leaves the pages Guest-Valid.
    public mutating func launch(_ i: Int, imagePages: UInt64, kernel: inout Kernel, rmp: inout RMP) -> KernelStatus {
        guard vms[i].state == .created else { return .error(.EINVAL) }
        let asid = vms[i].config.id
        let configs = vms.map(\.config)
        guard let context = backend.allocMetadata(rmp: rmp, memory: kernel.memory, avoiding: configs, vmsa: false) else { return .error(.ENOMEM) }
        let (status, _) = kernel.rmpUpdate(&rmp, pfn: context >> pageShift, RMPUpdate(assigned: true, immutable: true, asid: 0))
        guard status == .ok else { return status }
        vms[i].arch.contextPage = context
        vms[i].state = .launching
        var launched: [UInt64] = []
        for gfn in 0..<min(imagePages, vms[i].config.pages) {
            let pfn = vms[i].config.spa(gfn) >> pageShift
            let (s, _) = kernel.rmpUpdate(&rmp, pfn: pfn, RMPUpdate(gpa: gfn << pageShift, assigned: true, immutable: true, asid: asid))
            guard s == .ok else { return s }
            rmp.firmwareWrite(pfn) { $0.validated = true }  // SNP_LAUNCH_UPDATE (PAGE_TYPE_NORMAL)
            launched.append(pfn)
        }
        for _ in 0..<vms[i].config.vcpus {
            guard let vmsa = backend.allocMetadata(rmp: rmp, memory: kernel.memory, avoiding: configs, vmsa: true) else { return .error(.ENOMEM) }
            // rmp_make_private(pfn, INITIAL_VMSA_GPA, PG_LEVEL_4K, sev->asid, true), sev.c snp_launch_update_vmsa.
            let (s, _) = kernel.rmpUpdate(&rmp, pfn: vmsa >> pageShift, RMPUpdate(gpa: KVM.initialVMSAGPA, assigned: true, immutable: true, asid: asid))
            guard s == .ok else { return s }
            rmp.firmwareWrite(vmsa >> pageShift) { $0.validated = true; $0.vmsa = true }  // LAUNCH_UPDATE (PAGE_TYPE_VMSA)
            vms[i].arch.vmsaPages.append(vmsa)
            launched.append(vmsa >> pageShift)
        }
        for pfn in launched { rmp.firmwareWrite(pfn) { $0.immutable = false } }  // SNP_LAUNCH_FINISH
        vms[i].state = .running
        return .ok
    }
}
