import ArgumentParser
import Reports
import Simulation

/// `cocomem demo` (and `cocomem` alone): the built-in showcase scenario, explained.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the built-in showcase scenario and explain what it shows.")

    /// The showcase: what C-bit changes do to an SME host's direct map.
    static let scenario = """
        name: demo-direct-map-fragmentation
        seed: 42
        machine:
          arch: x86-64
          memory: 16G
          gbpages: true
        host:
          cpa-collapse: rox
        steps:
          - set_memory_decrypted: {pa: 0x40001000, numpages: 1}
            expect: ok
          - set_memory_encrypted: {pa: 0x40001000, numpages: 1}
            expect: ok
          - set_memory_rox: {pa: 0x40000000, numpages: 512}
            expect: ok
          - workload: {kind: cpa-churn, operations: 2000}
            expect: ok
        check:
          - no-errors
          - invariants
          - directmap: {1g: "<= 14G"}
        """

    func run() throws { print(try Self.text()) }

    static func text() throws -> String {
        let s = try Scenario.load(yaml: scenario, file: "<demo>")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true))
        var out = """
            cocomem demo: how C-bit changes fragment an SME host's direct map.

            The host boots 16 GiB with 1G direct-map pages. Step 1 decrypts one 4K page that
            sits inside a 1G leaf: change_page_attr splits 1G -> 2M -> 4K. Step 2 encrypts it
            again, but splitting is one-way: the 4K leaves stay. Step 3 is set_memory_rox over
            that 2M region: with CPA_COLLAPSE (policy host.cpa-collapse=rox) the 512 identical
            PTEs collapse back into one 2M leaf. Step 4 bounces 2000 random pages through
            decrypt/encrypt, as swiotlb-style buffers would, and nothing collapses them.

            """
        out += "\n" + RunReport.summary(r)
        out += "\n/proc/meminfo at the end:\n" + Meminfo.directMap(r.machine.kernel)
        out += """

            Try:
              cocomem run examples/cpa-basics.yaml --ptdump
              cocomem compare examples/cpa-churn.yaml --policy never --policy always
              cocomem run examples/cpa-churn.yaml --svg map.svg
              cocomem compare examples/snp-directmap-policies.yaml --policy none --policy split-on-assign --policy unmap-private
              cocomem list steps
            """
        return out
    }
}
