import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SEV-SNP workloads: guests booting, converting pages and being torn down.
extension Workloads {
    static let guest = Parameter("guest", .guest, required: true, "the guest")
    static let conversions = Parameter("operations", .count(1...1_000_000_000_000), default: "1", "how many conversions")

    static let snp: [WorkloadDefinition] = [
        snpWorkload("guest-boot", "launch (context and VMSA pages), then the guest accepts all its memory in 2M units; KVM prepares guest_memfd pages on fault",
                    [guest]) { i, _, _ in
            { p, m in
                var t = WorkloadTally()
                t.note(SNPPlatform.guestBoot(&p, &m, i))
                return t
            }
        },
        WorkloadDefinition(
            "adversarial-flip",
            "the guest flips random 4K pages between private and shared (set_memory_decrypted/encrypted), forcing PSMASH and host splits; with guest: all, each flip picks a guest at random",
            [Parameter("guest", .guestOrAll, required: true, "the guest"), conversions]
        ) { a, ctx throws(ScenarioError) in
            let ops = a.number("operations")
            let targets = a.guest.map { [($0.index, $0.spec.memory >> pageShift)] } ?? ctx.guests.indices.map { ($0, ctx.guests[$0].memory >> pageShift) }
            return { m throws(HostKernelError) in
                m.withPlatform(SNPPlatform.self) { p, m in
                    if targets.count == 1 {
                        let (i, pages) = targets[0]
                        return repeatGuestOps(&p, &m, i, ops) { guest, random, pvalidate, vmgexit in
                            flip(&guest, random(pages), pvalidate, vmgexit)
                        }
                    }
                    var tally = WorkloadTally()
                    for k in 0..<ops {
                        let (i, pages) = targets[Int(m.rng.below(UInt64(targets.count)))]
                        let gfn = m.rng.below(pages)
                        tally.note(SNPPlatform.guestCalls(&p, i, &m.kernel, &m.counters, &m.guestKernels[i]) { guest, pvalidate, vmgexit in
                            flip(&guest, gfn, pvalidate, vmgexit)
                        })
                        m.tick(k + 1, ops, platform: p)
                    }
                    return tally
                }
            }
        },
        snpWorkload("swiotlb-churn", "bounce buffers of numpages pages made shared and private again, as swiotlb-style I/O does",
                    [guest, conversions, Parameter("numpages", .count(1...512), "pages per buffer (default 1)")]) { i, g, a in
            let ops = a.number("operations"), pages = g.memory >> pageShift
            let n = min(a[number: "numpages"] ?? 1, pages)
            return { p, m in
                repeatGuestOps(&p, &m, i, ops) { guest, random, pvalidate, vmgexit in
                    let first = random(pages - n + 1)
                    let r = guest.snpSetMemory(first..<first + n, encrypt: false, pvalidate: pvalidate, vmgexit: vmgexit)
                    return r.kind == .success ? guest.snpSetMemory(first..<first + n, encrypt: true, pvalidate: pvalidate, vmgexit: vmgexit) : r
                }
            }
        },
        snpWorkload("vm-churn", "the VM is destroyed (memory, VMSAs and the context page back to the hypervisor), created and booted again",
                    [guest, conversions]) { i, _, a in
            let ops = a.number("operations")
            return { p, m in
                var t = WorkloadTally()
                for k in 0..<ops {
                    let down = SNPPlatform.guestRecreate(&p, &m, i)
                    t.note(down.kind == .success ? SNPPlatform.guestBoot(&p, &m, i) : down)
                    m.tick(k + 1, ops, platform: p)
                }
                return t
            }
        },
    ]

    /// One adversarial flip: set_memory_decrypted of a private page, set_memory_encrypted of
    /// a shared one.
    static func flip(_ guest: inout GuestKernel, _ gfn: UInt64, _ pvalidate: SNPPvalidate, _ vmgexit: SNPVMGEXIT) -> OKOr {
        guest.snpFlip(gfn, pvalidate: pvalidate, vmgexit: vmgexit)
    }

    /// A workload that drives one SNP guest with the platform taken out once for all its
    /// operations.
    static func snpWorkload(
        _ name: String, _ summary: String, _ parameters: [Parameter],
        _ body: @escaping @Sendable (Int, GuestSpec, StepArguments) -> @Sendable (inout SNPPlatform, inout Machine) -> WorkloadTally
    ) -> WorkloadDefinition {
        WorkloadDefinition(name, summary, parameters) { a, _ throws(ScenarioError) in
            let (i, g) = a.guest!
            let run = body(i, g, a)
            return { m throws(HostKernelError) in m.withPlatform(SNPPlatform.self) { p, m in run(&p, &m) } }
        }
    }

    /// Repeats a guest-kernel operation `ops` times with the guest's PVALIDATE and VMGEXIT
    /// wired to the machine; `random(n)` draws below n from the run's generator.
    static func repeatGuestOps(
        _ p: inout SNPPlatform, _ m: inout Machine, _ i: Int, _ ops: UInt64,
        _ op: (inout GuestKernel, (UInt64) -> UInt64, SNPPvalidate, SNPVMGEXIT) -> OKOr
    ) -> WorkloadTally {
        var tally = WorkloadTally()
        var rng = m.rng
        let progress = m.onProgress
        // In batches of --sample's N (one batch without it), sampling between batches: the
        // guest's calls hold the machine's parts for the length of a batch.
        let batch = m.batchSize(ops) ?? max(ops, 1)
        var done: UInt64 = 0
        while done < ops {
            let end = min(ops, done + batch)
            SNPPlatform.guestCalls(&p, i, &m.kernel, &m.counters, &m.guestKernels[i]) { guest, pvalidate, vmgexit in
                withoutActuallyEscaping(pvalidate) { pvalidate in
                    withoutActuallyEscaping(vmgexit) { vmgexit in
                        for k in done..<end {
                            tally.note(op(&guest, { rng.below($0) }, pvalidate, vmgexit))
                            if k & 4095 == 4095 { progress?(k + 1, ops) }
                        }
                    }
                }
            }
            done = end
            if m.sampleDue(done, ops) { m.sample(done, ops, platform: p) }
        }
        m.rng = rng
        return tally
    }
}
