import Cocomem
import Testing
import Expectations

/// The model used from another program through the one `Cocomem` import: the README's
/// example, and a direct-map policy of the embedding program's own, registered by name and
/// chosen by a scenario without a fork.
struct EmbeddingTests {
    /// The README's example, as it is printed there.
    @Test func theReadmeExample() throws {
        var rmp = RMP(end: 4 << 30)
        let update = RMPUpdate(gpa: 0x1000, assigned: true, asid: 5)
        expectEqual(rmp.rmpupdate(spa: 0x4000_0000, update), .success)
        expectEqual(rmp.rmpupdate(spa: 0x4000_0000, RMPUpdate(gpa: 0, assigned: true, size: .size2M, asid: 5)), .failOverlap)
        var kernel = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        try expectEqual(kernel.setMemoryDecrypted(kernel.layout.pageOffset + 0x4000_0000, numpages: 1), .ok)
        expectEqual(kernel.directPagesCount.size4K, 1024)
    }

    /// A policy that splits the whole 2M region to 4K before a page in it changes owner.
    struct SplitRegion: DirectMapPolicy {
        static let name = "split-region"
        static let summary = "split the whole 2M region to 4K before a page in it changes owner (an embedder's own)"
        func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? {
            let base = kernel.layout.pageOffset + (pfn & ~511) << 12
            guard case .ok = (try? kernel.setMemory4K(base, numpages: 512)) ?? .error(.EFAULT) else { return .EFAULT }
            return nil
        }
    }

    @Test func aPolicyOfTheEmbeddersOwnIsChosenByName() throws {
        DirectMapPolicyKind.register(SplitRegion.self)
        expectTrue(!DirectMapPolicyKind.register(SplitRegion.self))  // a name is registered once
        expectEqual(DirectMapPolicyKind(rawValue: "split-region")?.summary, SplitRegion.summary)
        let scenario = try Scenario.load(yaml: """
            name: embedded
            machine: {arch: x86-snp, memory: 4G}
            host: {directmap-policy: split-region}
            steps:
              - rmp_make_private: {pa: 0x40005000, asid: 1}
                expect: ok
            check:
              - metric: {direct_map_level2_splits: "== 1"}

            """, file: "embedded.yaml")
        let run = try Runner.run(scenario, options: RunOptions(checkInvariants: true))
        expectTrue(run.passed)
        expectEqual(run.machine.kernel.directPagesCount.size4K, 1024)  // the ISA 2M and the split region
        expectTrue(scenario.policies.contains { $0.slot == "host.directmap-policy" && $0.policy == "split-region" })
    }
}
