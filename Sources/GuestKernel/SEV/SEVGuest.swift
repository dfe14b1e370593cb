import Hardware
import HostKernel
import PageTables

extension GuestKernel {
    /// set_memory_encrypted/decrypted in an SEV (not SNP) guest: the C-bit flipped in the
    /// direct map with its cache and TLB flushes, then enc_status_change_finish tells the
    /// hypervisor (amd_enc_status_change_finish → notify_range_enc_status_changed, the
    /// KVM_HC_MAP_GPA_RANGE hypercall since 5.19). No PVALIDATE, no page-state change: the
    /// guest's key follows the C-bit of each access. arch/x86/mm/mem_encrypt_amd.c.
    public mutating func sevSetMemory(_ gfns: Range<UInt64>, encrypt: Bool, hypercall: (Range<UInt64>, Bool) -> Void) -> any Outcome {
        let va = va(gfn: gfns.lowerBound), n = Int(gfns.count)
        var finished = false
        let result: KernelStatus
        do {
            result = encrypt
                ? try kernel.setMemoryEncrypted(va, numpages: n) { which, _, _, _ in if which == .finish { finished = true }; return nil }
                : try kernel.setMemoryDecrypted(va, numpages: n) { which, _, _, _ in if which == .finish { finished = true }; return nil }
        } catch {
            return KernelStatus.error(.EINVAL)
        }
        if finished { hypercall(gfns, encrypt) }
        return result
    }
}
