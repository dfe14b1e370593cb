import Testing
@testable import Simulation

/// x86-tdx through scenarios: bad input is a scenario error naming the step and field; what
/// the module answers itself prints its status.
@Suite struct TDXScenarioTests {
    static let head = """
        name: t
        machine: {arch: x86-tdx, memory: 1G}
        guests:
          - {name: td0, asid: 1, memory: 16M, placement: {pa: 0x10000000}}
        steps:

        """

    func refused(_ text: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation, performing: { _ = try Scenario.load(yaml: text, file: "t.yaml") },
                throws: { "\($0)".contains(message) })
    }

    @Test func badInputIsAScenarioError() {
        // A SEAMCALL on another machine.
        refused("name: t\nmachine: {memory: 1G}\nsteps:\n  - tdh.mem.track: {td: td0}\n",
                "steps[1].tdh.mem.track: step 'tdh.mem.track' needs 'arch: x86-tdx'; this machine is x86-64")
        // An unknown TD, a level that does not exist, a field the step does not take.
        refused(Self.head + "  - tdh.mem.track: {td: td9}\n", "steps[1].tdh.mem.track.td: unknown guest 'td9'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0, gpa: 0, level: 4M}\n", "steps[1].tdh.mem.page.aug.level: unknown level '4M'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0, gpa: 0, lvl: 2M}\n", "unknown field 'lvl'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0}\n", "'gpa' is required")
        refused(Self.head + "  - host-write: {pa: 0x1000, access: nt}\n", "unknown access 'nt'")
    }

    /// A GPA not aligned to its level, or past the TD's private GPA space, reaches the module.
    @Test func operandsTheModuleRefusesPrintItsStatus() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - launch: {td: td0}
              - tdh.mem.sept.add: {td: td0, gpa: 0x200000, level: 1G}
              - tdh.mem.range.block: {td: td0, gpa: 0x800000000000}
              - tdg.mem.page.accept: {td: td0, gpa: 0x1000, level: 1G}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["TDX_SUCCESS", "TDX_OPERAND_INVALID 0xc000010000000001",
                                            "TDX_OPERAND_INVALID 0xc000010000000001", "TDX_OPERAND_INVALID 0xc000010000000001"])
    }
}
