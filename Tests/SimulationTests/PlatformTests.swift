import Testing
import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables
@testable import Simulation
import Expectations

/// The shape every architecture plugs into: registration, typed outcomes, the step schema,
/// guest kernels and stage-2 tables.
struct PlatformTests {
    static let snp = """
        name: p
        machine: {arch: x86-snp, memory: 4G, gbpages: false}
        guests:
          - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}}

        """

    func run(_ text: String) throws -> RunResult {
        try Runner.run(try Scenario.load(yaml: text, file: "p.yaml"), options: RunOptions(checkInvariants: true))
    }

    @Test func architecturesRegisterOnceAndSNPBringsItsOwnSteps() throws {
        let names = Architectures.all.map(\.name)
        expectEqual(Set(names).count, names.count)
        expectEqual(Architectures.modelled.map(\.name), ["x86-64", "x86-snp", "x86-sev", "x86-tdx", "arm64", "arm64-cca", "arm64-pkvm", "s390-pv"])
        let snp = try #require(Architectures.named("x86-snp"))
        expectTrue(snp.steps.contains { $0.name == "rmpupdate" })
        expectTrue(snp.workloads.contains { $0.name == "adversarial-flip" })
        expectEqual(snp.policySlots.map(\.name), ["host.directmap-policy"])
        expectEqual(snp.invariants.map(\.name), ["rmp", "stage-2"])
        expectTrue(Architectures.x86_64.steps.isEmpty)
        expectTrue(Steps.available(Architectures.x86_64).contains { $0.name == "host-write" })
        // A plain x86-64 run reports no SEV-SNP metric; an SNP run reports every declared one, in order.
        let plain = try run("name: t\nmachine: {memory: 4G}\nsteps: []\n")
        expectTrue(!plain.metrics.contains { $0.0 == "psmash" || $0.0 == "rmp_regions" })
        expectEqual(plain.metrics.map(\.0), Machine.metricInfo(Architectures.x86_64).map(\.name))
        let r = try run(Self.snp + "steps: []\n")
        expectEqual(r.metrics.map(\.0), Machine.metricInfo(snp).map(\.name))
    }

    /// Every step name and alias is unique on each architecture (host steps included), and
    /// so is every workload name.
    @Test func noTwoStepsShareAName() {
        for a in Architectures.all {
            let names = Steps.available(a).flatMap { [$0.name] + $0.aliases.map(\.name) } + ["workload"]
            expectEqual(Set(names).count, names.count, "\(a.name): \(names.filter { n in names.filter { $0 == n }.count > 1 })")
            let workloads = Workloads.available(a).map(\.name)
            expectEqual(Set(workloads).count, workloads.count)
        }
    }

    @Test func outcomesPrintInTheSpecificationsTermsAndKnowTheirKind() {
        let cases: [(any Outcome, String, OutcomeKind)] = [
            (OK(), "ok", .success),
            (KernelStatus.error(.EINVAL), "-EINVAL", .error),
            (KernelStatus.error(Errno(rawValue: 200)), "-200", .error),
            (SNPStatus.failOverlap, "FAIL_OVERLAP", .status),
            (SNPOutcome.status(.success, unchanged: true), "ok (CF=1)", .success),
            (SNPOutcome.npf([.rmp, .enc]), "NPF(RMP|ENC)", .fault),
            (SNPOutcome.notValidated, "#VC(0x404)", .fault),
            (HostAccessOutcome.fault(cause: .ownership(.rmp), end: .doubleFault), "#PF(RMP): double fault", .fault),
            (HostAccessOutcome.fault(cause: .notPresent, end: .oops), "#PF(not-present): oops", .fault),
            (HostAccessOutcome.ciphertext, "ok (ciphertext)", .success),
            (KVMExit.memoryFault, "KVM_EXIT_MEMORY_FAULT", .fault),
            (AnnotatedOutcome(KernelStatus.error(.EFAULT), notes: ["FAIL_OVERLAP"]), "-EFAULT (FAIL_OVERLAP)", .error),
            (PSCError(exitInfo2: 0x1_0000_0000), "PSC error 0x100000000", .error),
            (ValueOutcome("0xffffc90000000000"), "0xffffc90000000000", .success),
        ]
        for (o, text, kind) in cases {
            expectEqual(o.description, text)
            expectEqual(o.kind, kind, "\(text)")
            expectEqual(o.isError, (kind == .error))
            expectTrue(o.matches(text))
            expectTrue(!o.matches(text + " "))
        }
        expectEqual(Errno.EHWPOISON.description, "-EHWPOISON")
        expectEqual(Errno.EPERM.rawValue, 1)
    }

    @Test func helpAndErrorsComeFromTheSchema() throws {
        let rmpupdate = try #require(Steps.all.first { $0.name == "rmpupdate" })
        expectEqual(rmpupdate.arguments.map(\.name), ["spa", "assigned", "asid", "gpa", "size", "immutable", "issuer"])
        expectEqual(rmpupdate.arguments[1].helpLine, "assign (true) or return to the hypervisor (false) (true or false); required")
        expectEqual(rmpupdate.arguments[4].helpLine, "page size (one of 4K, 2M); default 4K")
        // The echo follows the schema: every argument, defaults filled in, in declaration order.
        let s = try Scenario.load(yaml: Self.snp + "steps:\n  - rmpupdate: {assigned: true, spa: 0x40200000}\n", file: "p.yaml")
        expectEqual(s.steps[0].arguments.map(\.0), ["spa", "assigned", "asid", "gpa", "size", "immutable", "issuer"])
        expectEqual(s.steps[0].arguments.map(\.1), ["0x40200000", "true", "0", "0x0", "4K", "false", "hypervisor"])
        let missing = #expect(throws: ScenarioError.self) { try Scenario.load(yaml: Self.snp + "steps:\n  - rmpupdate: {spa: 0}\n", file: "p.yaml") }
        expectEqual(missing?.message, "'assigned' is required: assign (true) or return to the hypervisor (false)")
        expectEqual(missing?.field, "steps[1].rmpupdate")
    }

    /// A field the interface cannot encode is a scenario error; what the hardware answers
    /// itself (a misaligned 2M RMPUPDATE) reaches the model and prints its status.
    @Test func aScenarioErrorVersusAStatusForTheSameField() throws {
        let bad = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - rmpupdate: {spa: somewhere, assigned: true}\n", file: "p.yaml")
        }
        expectEqual(bad?.field, "steps[1].rmpupdate.spa")
        expectEqual(bad?.message.hasPrefix("'somewhere' is not a number"), true)
        let past = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - rmpupdate: {spa: 0x200000000, assigned: true}\n", file: "p.yaml")
        }
        expectEqual(past?.message, "0x200000000 is past the end of RAM (0x100000000)")
        let r = try run(Self.snp + "steps:\n  - rmpupdate: {spa: 0x40001000, assigned: true, asid: 1, size: 2M}\n    expect: FAIL_INPUT\n")
        expectTrue(r.passed)
        expectEqual(r.records[0].outcome.kind, .status)
    }

    /// The guest's own kernel: set_memory_decrypted clears the C-bit in its direct map
    /// (splitting its 2M leaf), runs PVALIDATE and a page-state change through KVM, and its
    /// /proc/meminfo shows the split.
    @Test func theGuestsOwnDirectMapAfterSetMemoryDecrypted() throws {
        let r = try run(Self.snp + """
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - set_memory_decrypted: {guest: vm0, gpa: 0x3000}
                expect: ok
              - guest_set_memory_encrypted: {guest: vm0, gpa: 0x3000}
                expect: ok
              - set_memory_decrypted: {guest: vm0, gpa: 0x5000, numpages: 2}
                expect: ok
            """)
        expectTrue(r.passed)
        let g = r.machine.guestKernels[0]
        expectTrue(!g.isEncrypted(gfn: 5))
        expectTrue(!g.isEncrypted(gfn: 6))
        expectTrue(g.isEncrypted(gfn: 3))
        expectTrue(g.isEncrypted(gfn: 7))
        expectEqual(g.kernel.directMapLeaf(PhysAddr(0x5000))?.size, .size4K)
        expectEqual(g.kernel.directMapLeaf(PhysAddr(0x20_0000))?.size, .size2M)
        // 8M of guest memory: [0, 2M) split to 4K, three 2M leaves; the host's map is untouched by it.
        expectEqual(g.kernel.directPagesCount, LeafCounts(size4K: 512, size2M: 3))
        expectEqual(g.kernel.stats.splits.size2M, 1)
        expectEqual(g.kernel.stats.encConversions, 4)
        let p = try #require(r.machine.platform as? SNPPlatform)
        expectTrue(!p.kvm.vms[0].isPrivate(5))
        expectTrue(p.kvm.vms[0].isPrivate(3))
        expectEqual(r.records.map(\.arguments.first?.0), ["kind", "numpages", "numpages", "numpages"])
    }

    /// Launch maps nothing; the guest's accept maps 2M stage-2 leaves; converting one page
    /// zaps its 2M leaf, and the next private fault in that region maps 4K.
    @Test func stage2LeavesAfterLaunchAndAfterAConversion() throws {
        let launched = try run(Self.snp + "steps:\n  - launch: {guest: vm0}\n")
        expectEqual((launched.machine.platform as? SNPPlatform)?.kvm.vms[0].stage2.leafCounts, LeafCounts())
        let r = try run(Self.snp + """
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - set_memory_decrypted: {guest: vm0, gpa: 0x201000}
              - guest-access: {guest: vm0, gpa: 0x200000}
                expect: ok (RMP #NPF: PSMASH)
            """)
        let vm = try #require((r.machine.platform as? SNPPlatform)?.kvm.vms[0])
        expectEqual(vm.stage2Leaf(0)?.size, .size2M)
        expectEqual(vm.stage2Leaf(0x600)?.size, .size2M)
        expectEqual(vm.stage2Leaf(0x201), nil)  // shared now: zapped, not faulted in again
        expectEqual(vm.stage2Leaf(0x200)?.size, .size4K)
        expectEqual(vm.stage2Leaf(0x200)?.phys, PhysAddr(0x4020_0000))
        expectEqual(vm.stage2.leafCounts, LeafCounts(size4K: 1, size2M: 3))
    }

    /// Access steps take `cpu:` (default 0), checked against the machine's CPUs; the host's
    /// access steps run on every architecture, with its ownership check (none on x86-64).
    @Test func accessStepsTakeACPUAndRunOnEveryArchitecture() throws {
        let e = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: "name: t\nmachine: {memory: 4G}\nsteps:\n  - host-write: {pa: 0x40000000, cpu: 2}\n", file: "t.yaml")
        }
        expectEqual(e?.message, "cpu 2 is past the machine's 1 CPU (valid: 0 to 0)")
        expectEqual(e?.field, "steps[1].host-write.cpu")
        let r = try run("""
            name: t
            machine: {memory: 4G, cpus: 4}
            steps:
              - host-write: {pa: 0x40000000, cpu: 3}
                expect: ok
              - set_memory_np: {pa: 0x40000000}
              - host-write: {pa: 0x40000000, context: kernel-stack}
                expect: "#PF(not-present): double fault"
            """)
        expectTrue(r.passed)
        expectEqual(r.records[0].arguments.map(\.0), ["pa", "context", "cpu", "access"])
        expectEqual(r.metrics.first { $0.0 == "host_crashes" }?.1, 1)
        expectEqual(r.metrics.first { $0.0 == "not_present_faults" }?.1, 1)
    }

    /// adversarial-flip with `guest: all` spreads its flips over every guest at random.
    @Test func adversarialFlipOverAllGuests() throws {
        let r = try run("""
            name: t
            seed: 7
            machine: {arch: x86-snp, memory: 4G}
            guests:
              - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}}
              - {name: vm1, asid: 2, memory: 8M, placement: {pa: 0x80000000}}
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - workload: {kind: guest-boot, guest: vm1}
              - workload: {kind: adversarial-flip, guest: all, operations: 400}
                expect: ok
            """)
        expectTrue(r.passed)
        expectEqual(r.records[2].arguments.map(\.1), ["adversarial-flip", "all", "400"])
        let p = try #require(r.machine.platform as? SNPPlatform)
        for i in 0..<2 {
            let shared = (UInt64(0)..<2048).count { !p.kvm.vms[i].isPrivate($0) }
            let guestShared = (UInt64(0)..<2048).count { !r.machine.guestKernels[i].isEncrypted(gfn: $0) }
            #expect(shared > 50 && shared == guestShared, "guest \(i): \(shared) shared in KVM, \(guestShared) in its kernel")
        }
        let bad = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - workload: {kind: swiotlb-churn, guest: all}\n", file: "p.yaml")
        }
        expectEqual(bad?.message.hasPrefix("unknown guest 'all'"), true)
    }

    /// Review findings: a guest placed off a 2M boundary (4K folios: 2M ones would have to be
    /// 2M-aligned) never gets a 2M stage-2 leaf (the gfn and pfn must be aligned alike); a page-state change to the state a range already
    /// has zaps nothing; the old guest_* names need a guest; sizes near 2^64 are errors.
    @Test func stage2AlignmentNoOpConversionsAndAliases() throws {
        let r = try run("""
            name: t
            machine: {arch: x86-snp, memory: 4G}
            guests:
              - {name: vm0, asid: 1, memory: 4M, placement: {pa: 0x40001000}, backing: guest-memfd-4K}
            steps:
              - launch: {guest: vm0}
              - rmpupdate: {spa: 0x40200000, assigned: true, asid: 1, gpa: 0x1ff000, size: 2M}
                expect: ok
              - guest-access: {guest: vm0, gpa: 0x1ff000}
            """)
        let vm = try #require((r.machine.platform as? SNPPlatform)?.kvm.vms[0])
        expectEqual(vm.stage2Leaf(0x1ff)?.size, .size4K)
        expectEqual(vm.stage2.leafCounts.size2M, 0)

        let b = try run(Self.snp + """
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - psc: {guest: vm0, gpa: 0, size: 2M, to: private}
                expect: ok
            """)
        expectEqual((b.machine.platform as? SNPPlatform)?.kvm.vms[0].stage2Leaf(0)?.size, .size2M)

        let alias = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - guest_set_memory_decrypted: {pa: 0x40000000}\n", file: "p.yaml")
        }
        expectEqual(alias?.message, "guest_set_memory_decrypted needs 'guest' (it is set_memory_decrypted in a guest's kernel)")
        let huge = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - set_memory_decrypted: {guest: vm0, gpa: 0xfffffffffffff000, numpages: 2}\n", file: "p.yaml")
        }
        expectEqual(huge?.message.hasPrefix("0xfffffffffffff000 + 2 pages must be page-aligned and inside vm0's"), true)
        let psc = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: Self.snp + "steps:\n  - psc: {guest: vm0, gpa: 0x1000, size: 0xfffffffffffff000, to: shared}\n", file: "p.yaml")
        }
        expectEqual(psc?.field, "steps[1].psc.gpa")
    }

    /// `guest.` slots set every guest kernel's configuration; a guest entry may choose its
    /// own: with cpa-collapse always, vm0's direct map re-merges after the page comes back;
    /// vm1, which chose never, keeps the split.
    @Test func guestPolicySlotsAndPerGuestOverrides() throws {
        let r = try run("""
            name: t
            machine: {arch: x86-snp, memory: 4G}
            guest: {cpa-collapse: always}
            guests:
              - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}}
              - {name: vm1, asid: 2, memory: 8M, placement: {pa: 0x80000000}, cpa-collapse: never}
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - workload: {kind: guest-boot, guest: vm1}
              - set_memory_decrypted: {guest: vm0, gpa: 0x201000}
              - set_memory_encrypted: {guest: vm0, gpa: 0x201000}
              - set_memory_decrypted: {guest: vm1, gpa: 0x201000}
              - set_memory_encrypted: {guest: vm1, gpa: 0x201000}
            """)
        expectEqual(r.scenario.policies.map { "\($0.slot)=\($0.policy)" }, ["host.cpa-collapse=rox", "guest.cpa-collapse=always", "host.directmap-policy=split-on-assign"])
        expectEqual(r.machine.guestKernels[0].kernel.directPagesCount, LeafCounts(size2M: 4))
        expectEqual(r.machine.guestKernels[1].kernel.directPagesCount, LeafCounts(size4K: 512, size2M: 3))
        expectEqual(r.machine.kernel.config.collapse, .rox)
        // A plain x86-64 machine has no guest slots.
        let e = #expect(throws: ScenarioError.self) {
            try Scenario.load(yaml: "name: t\nmachine: {memory: 4G}\nguest: {cpa-collapse: never}\nsteps: []\n", file: "t.yaml")
        }
        expectEqual(e?.message, "unknown field 'cpa-collapse'; there are none here")
    }

    /// A shared gfn maps from the VMM's memory: only the attributes limit its stage-2 leaf
    /// (host_pfn_mapping_level), not guest_memfd's folio or the RMP.
    @Test func sharedGfnsMapAtTheAttributesLevel() throws {
        let r = try run(Self.snp + """
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - psc: {guest: vm0, gpa: 0x200000, size: 2M, to: shared}
              - guest-access: {guest: vm0, gpa: 0x201000, private: false, write: true}
                expect: ok
              - psc: {guest: vm0, gpa: 0x400000, size: 4K, to: shared}
              - guest-access: {guest: vm0, gpa: 0x400000, private: false}
                expect: ok
            """)
        let vm = try #require((r.machine.platform as? SNPPlatform)?.kvm.vms[0])
        expectEqual(vm.stage2Leaf(0x201)?.size, .size2M)  // the whole 2M is shared
        expectEqual(vm.stage2Leaf(0x400)?.size, .size4K)  // mixed attributes: 4K
    }
}
