import Testing
import HostKernel
@testable import Simulation

/// `--check` walks everything only every N steps on machines whose page tables are large,
/// checking the regions each step changed in between, and always after the last step.
@Suite struct InvariantIntervalTests {
    func machine(_ text: String) throws -> Machine { try Scenario.load(yaml: text, file: "t.yaml").boot() }

    @Test func theIntervalFollowsTheSizeOfThePageTables() throws {
        #expect(try machine("name: t\nmachine: {memory: 4G}\nsteps: []\n").automaticFullCheckInterval == 1)
        let big = try machine("name: t\nmachine: {memory: 17T, gbpages: false}\nsteps: []\n")
        #expect(big.kernel.pageTable.tablePages > 16_384)
        #expect(big.automaticFullCheckInterval == 64)
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
        #expect(m.kernel.pageTable.touched?.ranges == [0xffff_8880_4000_0000...0xffff_8880_7fff_ffff])
        try m.checkInvariants(full: false)
        m.resetChanges()
        #expect(m.kernel.pageTable.touched?.isEmpty == true)
        for every in [1, 3, 64] {
            let r = try Runner.run(s, options: RunOptions(checkInvariants: true, fullCheckEvery: every))
            #expect(r.failure == nil && r.records.count == 4)
        }
    }
}
