import Testing
@testable import Simulation
import Expectations

/// Property tests: random and mutated YAML never crash the reader; it loads or it explains.
struct FuzzTests {
    static let seeds: [String] = [
        ScenarioLoaderTests.minimal,
        """
        name: f
        seed: 3
        machine:
          e820: |
            BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
            BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
          gbpages: false
        host: {cpa-collapse: never}
        steps:
          - vmap: {pa: 0x40000000, numpages: 2}
            expect: "0xffffc90000000000"
          - workload: {kind: split-scatter, operations: 3}
        check:
          - directmap: {4k: "<= 8M", 2m: ">= 1G"}
          - metric: {errors: "== 0"}
        """,
    ]

    static let alphabet = Array("abcdefxyz0123456789:-[]{},&*!|>'\"#% \n\t.")

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func mutatedScenariosNeverCrash(_ seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        var outcomes = (loaded: 0, refused: 0)
        for i in 0..<500 {
            var chars = Array(Self.seeds[i % Self.seeds.count])
            for _ in 0..<(1 + Int(rng.below(6))) {
                let at = Int(rng.below(UInt64(chars.count)))
                switch rng.below(4) {
                case 0: chars.remove(at: at)
                case 1: chars.insert(Self.alphabet[Int(rng.below(UInt64(Self.alphabet.count)))], at: at)
                case 2: chars[at] = Self.alphabet[Int(rng.below(UInt64(Self.alphabet.count)))]
                default:
                    let len = Int(rng.below(20))
                    let end = min(chars.count, at + len)
                    chars.insert(contentsOf: Array(chars[at..<end]), at: at)
                }
                if chars.isEmpty { chars = ["x"] }
            }
            do {
                _ = try Scenario.load(yaml: String(chars), file: "fuzz.yaml")
                outcomes.loaded += 1
            } catch {
                expectTrue(!error.message.isEmpty)
                outcomes.refused += 1
            }
        }
        // Both paths are exercised: some mutants still load, most are refused.
        expectTrue(outcomes.loaded > 0)
        expectTrue(outcomes.refused > 0)
    }

    @Test(arguments: [7, 8] as [UInt64])
    func randomTextNeverCrashes(_ seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        for _ in 0..<500 {
            let n = Int(rng.below(200))
            let text = String((0..<n).map { _ in Self.alphabet[Int(rng.below(UInt64(Self.alphabet.count)))] })
            #expect(throws: ScenarioError.self) { try Scenario.load(yaml: text, file: "random.yaml") }
        }
    }
}
