import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The TDX workloads, under the SEV-SNP workloads' names and parameters where they do the
/// same thing: TDs booting with unaccepted memory, converting pages, torn down and created
/// again, and the host writing into their memory.
extension Workloads {
    static let firmwareAccepted = Parameter("firmware-accepted", .address(), default: "256M",
                                            "memory the TD's firmware (TDVF) accepted before the kernel ran; the kernel finds the rest unaccepted")
    static let allocate = Parameter("allocate", .count(0...(1 << 40)), default: "0", "4K pages the kernel allocates after boot (lazy acceptance on the way)")

    static let tdx: [WorkloadDefinition] = [
        tdxWorkload("guest-boot", "the TD launched and finalized, its firmware accepting the low memory, the kernel the rest (guest.accept-memory: eager now, lazy as the allocator needs it), then `allocate` pages allocated",
                    [guest, firmwareAccepted, allocate]) { i, _, a in
            let fw = a.number("firmware-accepted"), pages = a.number("allocate")
            return { m in
                var t = WorkloadTally()
                t.note(TDXPlatform.guestBoot(&m, guest: i, firmwareAccepted: fw, allocate: pages))
                return t
            }
        },
        tdxWorkload("adversarial-flip", "the TD flips random 4K pages between private and shared (set_memory_decrypted/encrypted: MapGPA, zaps, private faults, ACCEPT)",
                    [guest, conversions]) { i, g, a in
            let ops = a.number("operations"), pages = g.memory >> pageShift
            return { m in
                var t = WorkloadTally()
                for k in 0..<ops {
                    let gfn = m.rng.below(pages)
                    t.note(TDXPlatform.guestSetMemory(&m, guest: i, gfns: gfn..<gfn + 1, encrypt: !m.guestKernels[i].isEncrypted(gfn: gfn)))
                    m.tick(k + 1, ops)
                }
                return t
            }
        },
        tdxWorkload("swiotlb-churn", "bounce buffers of numpages pages made shared and private again through MapGPA, as swiotlb-style I/O does",
                    [guest, conversions, Parameter("numpages", .count(1...512), "pages per buffer (default 1)")]) { i, g, a in
            let ops = a.number("operations"), pages = g.memory >> pageShift
            let n = min(a[number: "numpages"] ?? 1, pages)
            return { m in
                var t = WorkloadTally()
                for k in 0..<ops {
                    let first = m.rng.below(pages - n + 1)
                    let r = TDXPlatform.guestSetMemory(&m, guest: i, gfns: first..<first + n, encrypt: false)
                    t.note(r.kind == .success ? TDXPlatform.guestSetMemory(&m, guest: i, gfns: first..<first + n, encrypt: true) : r)
                    m.tick(k + 1, ops)
                }
                return t
            }
        },
        tdxWorkload("vm-churn", "the TD destroyed if it exists (zaps, HKID release, reclaim of every control and S-EPT page), created and booted again",
                    [guest, conversions, firmwareAccepted]) { i, _, a in
            let ops = a.number("operations"), fw = a.number("firmware-accepted")
            return { m in
                var t = WorkloadTally()
                for k in 0..<ops {
                    let down = m.withPlatform(TDXPlatform.self) { p, _ in p.kvm[i] == nil ? OK() : p.destroy(i) }
                    m.rebootGuestKernel(i)
                    t.note(down.kind == .success ? TDXPlatform.guestBoot(&m, guest: i, firmwareAccepted: fw, allocate: 0) : down)
                    m.tick(k + 1, ops)
                }
                return t
            }
        },
        tdxWorkload("host-stray-writes", "the host writes random pages of the TD's memory (a stray pointer, a DMA) with an access kind: no host fault; the owner bits and poison it leaves show in the metrics",
                    [guest, Parameter("operations", .count(1...1_000_000_000_000), default: "1", "how many writes"),
                     Parameter("access", .choice(HostWriteKind.allCases.map(\.rawValue)), default: "cached", "the store: cached (full lines), movnti or uc (partial)")]) { i, g, a in
            let ops = a.number("operations"), partial = a.text("access") != HostWriteKind.cached.rawValue
            return { m in
                m.withPlatform(TDXPlatform.self) { p, m in
                    for k in 0..<ops {
                        let pfn = (g.placement >> pageShift) + m.rng.below(g.memory >> pageShift)
                        _ = p.memoryAccess(pfn: pfn, write: true, partial: partial)
                        m.counters.operations += 1
                        m.tick(k + 1, ops)
                    }
                }
                return WorkloadTally()
            }
        },
    ]

    /// A workload that drives one TD guest.
    static func tdxWorkload(
        _ name: String, _ summary: String, _ parameters: [Parameter],
        _ body: @escaping @Sendable (Int, GuestSpec, StepArguments) -> @Sendable (inout Machine) -> WorkloadTally
    ) -> WorkloadDefinition {
        WorkloadDefinition(name, summary, parameters) { a, _ throws(ScenarioError) in
            let (i, g) = a.guest!
            return body(i, g, a)
        }
    }
}
