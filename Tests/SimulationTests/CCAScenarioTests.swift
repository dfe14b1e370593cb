import Testing
@testable import Simulation
import Expectations

/// arm64-cca through scenarios: bad input is a scenario error naming the step and field;
/// what the RMM and the check answer themselves print as their results.
struct CCAScenarioTests {
    static let head = "name: t\nmachine: {arch: arm64-cca, memory: 4G}\nsteps:\n"

    @Test func badInputIsAScenarioError() {
        refused("name: t\nmachine: {memory: 1G}\nsteps:\n  - rmi_granule_delegate: {pa: 0x1000}\n",
                "step 'rmi_granule_delegate' needs 'arch: arm64-cca'; this machine is x86-64")
        refused(Self.head + "  - gpc-access: {pa: 0x80000000, pas: el3}\n", "steps[1].gpc-access.pas: unknown pas 'el3'")
        refused(Self.head + "  - rmi_granule_delegate: {}\n", "'pa' is required")
        refused(Self.head + "  - rmi_granule_delegate: {pa: 0x80000000, ipa: 0}\n", "unknown field 'ipa'")
        // Realm calls: the machine, the realm, the level are the scenario's to get right.
        let realm = "guests:\n  - {name: r0, asid: 1, memory: 16M, placement: {pa: 0x90000000}}\nsteps:\n"
        refused("name: t\nmachine: {arch: x86-tdx, memory: 4G}\n" + realm.replacingOccurrences(of: "0x90000000", with: "0x10000000") + "  - rmi_rtt_create: {realm: r0, ipa: 0, level: 2}\n",
                "step 'rmi_rtt_create' needs 'arch: arm64-cca'; this machine is x86-tdx")
        refused("name: t\nmachine: {arch: arm64-cca, memory: 4G}\n" + realm + "  - rsi_ipa_state_set: {realm: r1, ipa: 0}\n", "unknown guest 'r1'")
        refused("name: t\nmachine: {arch: arm64-cca, memory: 4G}\n" + realm + "  - rmi_rtt_read_entry: {realm: r0, ipa: 0, level: 4}\n", "steps[1].rmi_rtt_read_entry.level")
        refused("name: t\nmachine: {arch: arm64-cca, memory: 4G}\n" + realm + "  - rmi_rtt_fold: {ipa: 0, level: 3}\n", "'realm' is required")
        refused("name: t\nmachine: {arch: arm64-cca, memory: 4G}\n" + realm + "  - rsi_ipa_state_set: {realm: r0, ipa: 0, ripas: io}\n", "unknown ripas 'io'")
        // A machine whose GPT the model would hold whole past 1 TiB.
        refused("name: t\nmachine: {arch: arm64-cca, memory: 2T}\nsteps: []\n", "RAM must end at or below 1 TiB")
    }

    /// The RMM's and the check's own answers (the check compares the access's physical
    /// address space, not the security state: Root touching an NS granule through the Root
    /// PAS fails); a host block mapping beside a delegated granule writes on, the granule
    /// itself is a GPF that ends the kernel.
    @Test func answersAndTheHostsFault() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - rmi_granule_delegate: {pa: 0x80201000}
              - rmi_granule_delegate: {pa: 0x200000000}
              - gpc-access: {pa: 0x80201000, pas: secure}
              - gpc-access: {pa: 0x1000, pas: root}
              - host-write: {pa: 0x80200000}
              - host-read: {pa: 0x80201000}

            """, file: "t.yaml"))
        expectEqual(r.records.map(\.result).prefix(5), ["RMI_SUCCESS", "RMI_ERROR_INPUT", "GPF (granule protection fault, GPT level 1)", "GPF (granule protection fault, GPT level 1)", "ok"])
        expectTrue(r.records[5].result.contains("GPF"))
        expectTrue(r.records[5].result.contains("oops"))
    }

    /// The explorer's state key sees a granule's GPT descriptor and RMM state.
    @Test func theHostFootprintFollowsTheGranule() throws {
        var m = try Runner.run(try Scenario.load(yaml: Self.head + "  - rmi_granule_delegate: {pa: 0x80201000}\n", file: "t.yaml")).machine
        let before = m.platform.hostFootprintDigest(pa: 0x80201000)
        let neighbour = m.platform.hostFootprintDigest(pa: 0x80200000)
        _ = m.withPlatform(CCAPlatform.self) { p, _ in p.firmware.granuleUndelegate(0x80201000) }
        expectNotEqual(before, m.platform.hostFootprintDigest(pa: 0x80201000))
        expectNotEqual(before, neighbour)
    }

    /// What the RMM answers itself prints as its status: an unaligned address, one outside
    /// the realm's IPA space, a realm not created yet; the realm's own RSI_ERROR_INPUT.
    @Test func theRMMAnswersBadAddresses() throws {
        let r = try Runner.run(try Scenario.load(yaml: """
            name: t
            machine: {arch: arm64-cca, memory: 4G}
            guests:
              - {name: r0, asid: 1, memory: 16M, placement: {pa: 0x90000000}}
            steps:
              - rmi_rtt_create: {realm: r0, ipa: 0, level: 2}
              - rmi_realm_create: {realm: r0}
              - rmi_rtt_create: {realm: r0, ipa: 0x1000, level: 2}
              - rmi_rtt_create: {realm: r0, ipa: 0x10000000000, level: 2}
              - rmi_rtt_create: {realm: r0, ipa: 0, level: 3}
              - rmi_rec_create: {realm: r0}
              - rmi_realm_activate: {realm: r0}
              - rsi_ipa_state_set: {realm: r0, ipa: 0x800}
              - rsi_ipa_state_get: {realm: r0, ipa: 0x8000000000}
              - rsi_ipa_state_set: {realm: r0, rec: 1, ipa: 0}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["RMI_ERROR_INPUT", "RMI_SUCCESS", "RMI_ERROR_INPUT", "RMI_ERROR_INPUT", "RMI_ERROR_RTT(1)", "RMI_SUCCESS",
                                            "RMI_SUCCESS", "RSI_ERROR_INPUT", "RSI_ERROR_INPUT", "realm not running: no such REC"])
    }
}
