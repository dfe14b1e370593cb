import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The realm workloads, under the SEV-SNP and TDX workloads' names where they do the same
/// thing.
extension Workloads {
    static let cca: [WorkloadDefinition] = [
        WorkloadDefinition("adversarial-flip", "the realm flips random 4K pages between protected and shared (set_memory_decrypted/encrypted: RSI, KVM's unmaps, RTT_SET_RIPAS) and touches each after (KVM's faults: DELEGATE, DATA_CREATE_UNKNOWN, RTT_MAP_UNPROTECTED)",
                           [guest, conversions]) { a, _ throws(ScenarioError) in
            let (i, g) = a.guest!
            let ops = a.number("operations"), pages = g.memory >> pageShift
            return { m in
                var t = WorkloadTally()
                for k in 0..<ops {
                    let gfn = m.rng.below(pages)
                    let r = CCAPlatform.guestSetMemory(&m, guest: i, gfns: gfn..<gfn + 1, encrypt: !m.guestKernels[i].isEncrypted(gfn: gfn))
                    t.note(r.kind == .success ? CCAPlatform.realmKernelTouch(&m, guest: i, gpa: gfn << pageShift) : r)
                    m.tick(k + 1, ops)
                }
                return t
            }
        },
    ]
}
