import Testing
import Hardware
import Hypervisor
@testable import Simulation
import Expectations

/// States the machine cannot be in are refused when the scenario is read (naming both things
/// that conflict), or answered with the error the kernel gives.
struct ModelStateTests {
    func error(_ text: String) -> ScenarioError? {
        do { _ = try Scenario.load(yaml: text, file: "m.yaml"); return nil } catch { return error }
    }

    /// vmrun and vmexit name a VMSA page: page-aligned RAM (an e820 hole is not).
    @Test(arguments: [
        ("vmrun: {spa: 0x40000800}", "0x40000800 is not page-aligned: a VMSA is a page"),
        ("vmexit: {spa: 0xa0000}", "0xa0000 is not RAM; RAM is [0x0-0xa0000) [0x100000-0x100000000)"),
    ])
    func vmsaStepsNameAPage(_ text: String, _ message: String) {
        let m = error("name: t\nmachine: {arch: x86-snp, memory: 4G}\nsteps:\n  - " + text + "\n")
        expectEqual(m?.message.contains(message), true, "message was: \(m?.message ?? "none")")
    }

    @Test func thePooledPolicysPoolMustBeRAMNoGuestOccupies() {
        let hole = """
            name: t
            machine:
              arch: x86-snp
              e820: |
                BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
                BIOS-e820: [mem 0x0000000001000000-0x00000000010fffff] reserved
                BIOS-e820: [mem 0x0000000001100000-0x00000000bfffffff] usable
            host: {directmap-policy: pooled}
            steps: []

            """
        let e = error(hole)
        expectEqual(e?.message, "the pooled policy sets aside its 512-page pool at [0x1000000-0x1200000), which is not all RAM here; RAM is [0x0-0x9f000) [0x1100000-0xc0000000)")
        expectEqual(e?.line, 8)
        expectEqual(e?.field, "host.directmap-policy")
        let overlap = error("name: t\nmachine: {arch: x86-snp, memory: 4G}\nhost: {directmap-policy: pooled}\nguests:\n  - {name: vm0, asid: 1, memory: 32M, placement: {pa: 0x1000000}}\nsteps: []\n")
        expectEqual(overlap?.message, "guest vm0 at [0x1000000-0x3000000) overlaps the pooled policy's pool at [0x1000000-0x1200000)")
        // Without the pooled policy the same placement is fine.
        expectEqual(error("name: t\nmachine: {arch: x86-snp, memory: 4G}\nguests:\n  - {name: vm0, asid: 1, memory: 32M, placement: {pa: 0x1000000}}\nsteps: []\n"), nil)
    }

    @Test func guestExitsNeedARunningGuest() throws {
        let s = try Scenario.load(yaml: """
            name: t
            machine: {arch: x86-snp, memory: 4G}
            guests:
              - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}}
            steps:
              - psc: {guest: vm0, gpa: 0x1000, to: shared}
              - guest-access: {guest: vm0, gpa: 0x1000}
              - launch: {guest: vm0}
              - destroy: {guest: vm0}
              - psc: {guest: vm0, entries: [{gpa: 0x1000, op: shared}]}

            """, file: "m.yaml")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true))
        #expect(r.records.map(\.result) == ["-EINVAL (KVM_RUN: vm0 is not launched)", "-EINVAL (KVM_RUN: vm0 is not launched)", "ok", "ok",
                                            "-EINVAL (KVM_RUN: vm0 is destroyed)"])
    }

    /// A machine reports the metrics of its layers only: an arm64 run has none of x86
    /// change_page_attr's C-bit, cache and collapse counters, and x86 runs keep them.
    @Test func anArm64RunReportsNoX86OnlyMetric() throws {
        let arm = try Runner.run(try Scenario.load(yaml: "name: t\nmachine:\n  arch: arm64\n  memory: 1G\nsteps: []\n", file: "m.yaml"))
        let names = arm.machine.metrics.map(\.0)
        expectEqual(names, Machine.metricInfo(arm.scenario.architecture).map(\.name))
        let x86Only = ["direct_map_level2_collapses", "direct_map_level3_collapses", "tlb_split_flushes", "cache_flush_pages", "wbinvd", "cbit_conversions"]
        expectEqual(names.filter(x86Only.contains), [])
        expectEqual(Machine.metricInfo(Architectures.x86_64).map(\.name).filter(x86Only.contains), x86Only)
    }

    /// KVM's metadata pages (the context page, VMSAs) come from RAM only, never from a hole
    /// (the allocator starts at 16M, where this machine has one).
    @Test func metadataPagesAreRAM() throws {
        let s = try Scenario.load(yaml: """
            name: t
            machine:
              arch: x86-snp
              e820: |
                BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
                BIOS-e820: [mem 0x0000000000100000-0x0000000000ffffff] usable
                BIOS-e820: [mem 0x0000000001000000-0x0000000001003fff] reserved
                BIOS-e820: [mem 0x0000000001004000-0x000000007fffffff] usable
            guests:
              - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}, vcpus: 4}
            steps:
              - launch: {guest: vm0}

            """, file: "m.yaml")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true))
        let rmp = try #require((r.machine.platform as? SNPPlatform)?.rmp)
        let memory = r.machine.kernel.memory
        var assigned: [UInt64] = []
        for pfn in 0..<(UInt64(0x8000_0000) >> 12) where rmp[pfn].assigned && !(0x40000..<0x40800).contains(pfn) { assigned.append(pfn) }
        expectEqual(assigned.count, 5)  // the context page and four VMSAs
        expectTrue(assigned.allSatisfy { memory.isRAM(($0 << 12)..<(($0 + 1) << 12)) })
    }
}
