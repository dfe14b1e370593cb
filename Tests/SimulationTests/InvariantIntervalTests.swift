import Testing
import HostKernel
@testable import Simulation
import Expectations

/// `--check` walks everything only every N steps on machines whose page tables are large,
/// checking the regions each step changed in between, and always after the last step.
struct InvariantIntervalTests {
    func machine(_ text: String) throws -> Machine { try Scenario.load(yaml: text, file: "t.yaml").boot() }

    @Test func theIntervalFollowsTheSizeOfThePageTables() throws {
        try expectEqual(machine("name: t\nmachine: {memory: 4G}\nsteps: []\n").automaticFullCheckInterval, 1)
        let big = try machine("name: t\nmachine: {memory: 17T, gbpages: false}\nsteps: []\n")
        expectTrue(big.kernel.pageTable.tablePages > 16_384)
        expectEqual(big.automaticFullCheckInterval, 64)
    }

    /// The platform's own tables count as well (SNP's RMP chunks in use), and the size is
    /// asked again as a run grows: 34 GiB of guest memory booted is 17,408 RMP chunks, and
    /// the chunk holding the firmware's context page and the VMSA is one more.
    @Test func thePlatformsTablesCountAndGrowingSwitchesTheInterval() throws {
        let boot = try Scenario.load(yaml: """
            name: t
            machine: {arch: x86-snp, memory: 48G}
            guests: [{name: vm0, asid: 1, memory: 34G, npt: 2M, placement: {pa: 0x240000000}}]
            steps:
              - workload: {kind: guest-boot, guest: vm0}

            """, file: "t.yaml")
        var m = try boot.boot()
        expectTrue(m.platform.checkedTablePages < 16)
        expectEqual(m.automaticFullCheckInterval, 1)
        try expectEqual(m.run(boot.steps[0]).isError, false)
        expectEqual((m.platform as? SNPPlatform)?.rmp.chunksInUse, 17_408 + 1)
        expectTrue(m.kernel.pageTable.tablePages + m.guestKernels[0].kernel.pageTable.tablePages < 16_384)
        expectEqual(m.automaticFullCheckInterval, 64)
    }

    @Test func aRunBetweenFullWalksChecksTheChangedRegionsAndEndsWithAFullWalk() throws {
        let s = try Scenario.load(yaml: """
            name: t
            machine: {memory: 4G, cpus: 2}
            steps:
              - set_memory_4k: {pa: 0x40000000, numpages: 512}
              - set_memory_ro: {pa: 0x40001000}
              - host-read: {pa: 0x40001000, cpu: 1}
              - set_memory_rw: {pa: 0x40001000}

            """, file: "t.yaml")
        var m = try s.boot()
        m.trackChanges()
        _ = try m.run(s.steps[0])
        expectEqual(m.kernel.pageTable.touched?.ranges, [0xffff_8880_4000_0000...0xffff_8880_7fff_ffff])
        try m.checkInvariants(full: false)
        m.resetChanges()
        expectEqual(m.kernel.pageTable.touched?.isEmpty, true)
        for every in [1, 3, 64] {
            let r = try Runner.run(s, options: RunOptions(checkInvariants: true, fullCheckEvery: every))
            expectEqual(r.failure, nil)
            expectEqual(r.records.count, 4)
        }
    }
}
