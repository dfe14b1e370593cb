import Foundation
import Testing
@testable import CocomemCLI
import Expectations

/// Issue 21: faults explained as the kernel would log them, a crash said first, the records
/// in --json, --trace and on the map; policies overridden from the command line.
struct ExplainTests {
    typealias CLI = CommandLineTests
    static let adversarial = ScenarioCommandTests.example("snp-adversarial.yaml")
    static let firstFault = "step 4 op 362: #PF: supervisor write access in kernel mode at 0xffff8881f38b5000, error_code(0x80000003) - RMP violation; "
        + "pa 0x1f38b5000, kernel-stack on CPU 0, mapped by a 1G pud; PFN 0x1f38b5 is the host's, but PFN 0x1f3800 in its 2M region is assigned "
        + "to ASID 1 at GPA 0xf3800000, and a 1G mapping is checked against every entry of the region -> double fault"

    /// Under `none` the adversarial run double-faults 30 times: the summary says so first,
    /// then lists the first N faults (default 10) and the count.
    @Test func aCrashIsSaidFirstAndEachFaultIsExplained() throws {
        let r = try CLI.run(["run", Self.adversarial, "--policy", "host.directmap-policy=none"])
        #expect(r.status == 1 && r.out.hasSuffix("FAIL  no-host-crash  (30 host accesses crashed the host)\n\nFAIL\n"), "\(r.out)")
        let lines = r.out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        expectEqual(lines[1], "policies  host.cpa-collapse=rox guest.cpa-collapse=rox host.directmap-policy=none")
        expectEqual(lines[3], "HOST CRASHED  30 host accesses brought the host down; the first:")
        expectEqual(lines[4], "  " + Self.firstFault)
        expectTrue(r.out.contains("\nhost faults  30 (the first 10; --faults N shows more)\n  " + Self.firstFault + "\n"))
        expectEqual(lines.filter { $0.hasPrefix("  step 4 op ") }.count, 11)  // the crash, then ten
        let two = try CLI.run(["run", Self.adversarial, "--policy", "host.directmap-policy=none", "--faults", "2"])
        expectTrue(two.out.contains("host faults  30 (the first 2; --faults N shows more)\n"))
        expectEqual(two.out.split(separator: "\n").filter { $0.hasPrefix("  step 4 op ") }.count, 3)
        // The file's own policy keeps the host up: no crash line, no faults.
        let kept = try CLI.run(["run", Self.adversarial])
        expectTrue(!kept.out.contains("HOST CRASHED"))
        expectTrue(!kept.out.contains("host faults"))
    }

    /// Each architecture's fault in its own words: an arm64 stage-2 abort names the owner the
    /// host stage-2 records; an x86 not-present fault, the level where the walk stopped.
    @Test func faultsOnOtherArchitecturesNameTheirCause() throws {
        let pkvm = try CLI.run(["run", ScenarioCommandTests.example("pkvm-scrub.yaml")])
        #expect(pkvm.out.contains("""
            host faults  1
              step 6: Unable to handle kernel paging request at virtual address 0xffff000000010000: stage-2 abort, read in kernel mode; \
            pa 0x40010000, user-copy on CPU 0, mapped by a 2M level 2 block; the host stage-2 entry records owner PKVM_ID_GUEST -> fixed up

            """))
        let tlb = try CLI.run(["run", ScenarioCommandTests.example("tlb-noflush.yaml")])
        #expect(tlb.out.contains("  step 5: #PF: supervisor read access in kernel mode at 0xffff888001000000, error_code(0x0) - not-present page; "
            + "pa 0x1000000, data on CPU 0, mapped by a not-present pte; the direct map has no present entry for it -> oops\n"))
        let arm = try CLI.run(["run", ScenarioCommandTests.example("arm64-tlbi.yaml")])
        #expect(arm.out.contains("mapped by an invalid level 3 entry; the direct map has no present entry for it -> oops\n"))
    }

    /// The same records in --json (all kept, with the total), as instant events on the
    /// faulting CPU's track in --trace, and as marks on the map.
    @Test func theRecordsGoIntoJSONTraceAndMap() throws {
        let dir = NSTemporaryDirectory() + "cocomem-explain-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let r = try CLI.run(["run", Self.adversarial, "--policy", "host.directmap-policy=none", "--json",
                             "--trace", dir + "/t.json", "--svg", dir + "/m.svg"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        let faults = try #require(json["faults"] as? [String: Any])
        let records = try #require(faults["records"] as? [[String: Any]])
        expectEqual(faults["total"] as? Int, 30)
        expectEqual(records.count, 30)
        expectEqual(records[0]["line"] as? String, Self.firstFault)
        expectEqual(records[0]["error_code"] as? String, "0x80000003")
        expectEqual(records[0]["end"] as? String, "double fault")
        expectEqual(records[0]["mapping"] as? String, "a 1G pud")
        expectEqual(records[0]["operation"] as? Int, 362)
        let trace = try String(contentsOfFile: dir + "/t.json", encoding: .utf8)
        expectEqual(trace.components(separatedBy: "\"cat\":\"fault\",\"ph\":\"i\"").count - 1, 30)
        expectTrue(trace.contains("\"args\":{\"name\":\"CPU 0\"}"))
        let svg = try String(contentsOfFile: dir + "/m.svg", encoding: .utf8)
        expectEqual(svg.components(separatedBy: "<circle").count - 1, 31)  // 30 marks and the legend's
        let escaped = Self.firstFault.replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "'", with: "&apos;")
        expectTrue(svg.contains("<title>" + escaped + "</title></circle>"))
    }

    /// `--policy SLOT=NAME` reaches every output: the JSON's policies, the ptdump, the map.
    @Test func policyOverridesReachEveryOutput() throws {
        let file = ScenarioCommandTests.example("snp-directmap-policies.yaml")
        let json = try CLI.run(["run", file, "--policy", "host.directmap-policy=none", "--json"])
        expectTrue(json.out.contains("\"host.directmap-policy\": \"none\""))
        // split-on-assign leaves the 2M region at 0x40000000 in 4K pages; none leaves its 2M leaf.
        let ptdump = try CLI.run(["run", file, "--ptdump", "--at", "1"])
        let none = try CLI.run(["run", file, "--policy", "host.directmap-policy=none", "--ptdump", "--at", "1"])
        expectTrue(ptdump.out.contains("\n0xffff888040000000-0xffff888040001000           4K     RW                 GLB NX pte\n"))
        expectTrue(none.out.contains("\n0xffff888000200000-0xffff888100000000        4094M     RW         PSE     GLB NX pmd\n"))
    }

    /// On s390-pv every output runs: the kernel's ptdump says the model keeps no DAT tables,
    /// a process's says what its table is, /proc/meminfo has no DirectMap lines.
    @Test func s390OutputsSayWhatTheModelKeeps() throws {
        let file = ScenarioCommandTests.example("s390-pv-inaccessible.yaml")
        let kernel = try CLI.run(["run", file, "--ptdump", "--meminfo"])
        expectEqual(kernel.status, 0)
        expectTrue(kernel.out.contains("(no kernel page table on s390x: the model keeps no DAT tables for the identity mapping; --process prints a process's)"))
        expectTrue(kernel.out.contains("(no DirectMap lines on s390x)"))
        let user = try CLI.run(["run", file, "--ptdump", "--process", "qemu"])
        expectEqual(user.status, 0)
        expectTrue(user.out.contains("(the model's user table: x86-shaped levels and raw x86 values; s390's DAT layout is not modelled, docs/s390-pv.md)"))
        expectTrue(user.out.contains("0x00007ffff7f01000-0x00007ffff7f02000           4K USR ro                     NX pte"))
    }

    /// `--policy SLOT=NAME`: checked against the machine's slots and policies.
    @Test func policyOverridesAreChecked() throws {
        let cases: [([String], String)] = [
            (["--policy", "none"], "--policy 'none': write SLOT=NAME, e.g. host.directmap-policy=none"),
            (["--policy", "host.nothing=none"], "--policy 'host.nothing=none': no slot 'host.nothing' on this scenario's machine; valid: host.cpa-collapse, guest.cpa-collapse, host.directmap-policy"),
            (["--policy", "host.directmap-policy=sometimes"], "--policy 'host.directmap-policy=sometimes': 'sometimes' is not a policy of host.directmap-policy; valid: none, split-on-assign, "),
            (["--faults=-1"], "--faults -1: give 0 or more"),
        ]
        for (args, message) in cases {
            let r = try CLI.run(["run", Self.adversarial] + args)
            #expect(r.status != 0 && r.err.contains(message), "\(args): \(r.err)")
        }
    }
}

/// Issue 21: workloads observable with --sample (inside workloads, boot and end included)
/// in the CSV, the JSON and the trace.
struct SampleTests {
    typealias CLI = CommandLineTests

    @Test func samplesReachInsideWorkloads() throws {
        let file = ScenarioCommandTests.example("snp-adversarial.yaml")
        let csv = try CLI.run(["run", file, "--sample", "1000", "--csv"])
        let rows = csv.out.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).prefix(3).joined(separator: ",") }
        expectTrue(csv.out.hasPrefix("step,operation,directmap_4k_kb,"))
        // Boot; adversarial-flip's 3000 operations in three samples; host-writes' 20000 in
        // twenty; the final state after step 4 (step 1's guest-boot and step 3's 200
        // swiotlb operations are neither a multiple of 1000 nor the last step).
        expectEqual(rows.count, 1 + 1 + 3 + 20 + 1)
        expectEqual(Array(rows[1...5]), ["0,,2048", "2,1000,1660928", "2,2000,2693120", "2,3000,3330048", "4,1000,3422208"])
        expectEqual(rows.last, "4,,3422208")
        let json = try CLI.run(["run", file, "--sample", "1000", "--json"])
        expectTrue(json.out.contains("\"step\": 2,\n      \"operation\": 1000,\n      \"of\": 3000,"))
        let dir = NSTemporaryDirectory() + "cocomem-sample-\(UUID().uuidString).json"
        _ = try CLI.run(["run", file, "--sample", "1000", "--trace", dir])
        let trace = try String(contentsOfFile: dir, encoding: .utf8)
        expectEqual(trace.components(separatedBy: "\"cat\":\"batch\"").count - 1, 3 + 20)
        expectTrue(trace.contains("{\"name\":\"adversarial-flip ops 1001-2000\",\"cat\":\"batch\",\"ph\":\"X\",\"ts\":2333.333,\"dur\":333.333,"))
        // Numeric step arguments are numbers.
        expectTrue(trace.contains("\"args\":{\"kind\":\"adversarial-flip\",\"guest\":\"vm0\",\"operations\":3000,"))
    }

    /// Without --sample a trace still shows each workload's progress, in 64 batches (the
    /// last one short), and the run's JSON has no samples.
    @Test func aTraceCutsEachWorkloadIntoBatches() throws {
        let file = ScenarioCommandTests.example("snp-adversarial.yaml")
        let path = NSTemporaryDirectory() + "cocomem-batches-\(UUID().uuidString).json"
        let r = try CLI.run(["run", file, "--trace", path, "--json"])
        expectTrue(!r.out.contains("\"samples\""))
        let trace = try String(contentsOfFile: path, encoding: .utf8), short = String(trace.prefix(300))
        // adversarial-flip 3000 in 47s, swiotlb-churn 200 in 4s, host-writes 20000 in 313s.
        expectEqual(trace.components(separatedBy: "\"cat\":\"batch\"").count - 1, 64 + 50 + 64, "\(short)")
        expectTrue(trace.contains("{\"name\":\"adversarial-flip ops 1-47\",\"cat\":\"batch\",\"ph\":\"X\",\"ts\":2000.000,\"dur\":15.667,"))
        expectTrue(trace.contains("{\"name\":\"host-writes ops 19720-20000\",\"cat\":\"batch\",\"ph\":\"X\",\"ts\":4985.950,\"dur\":14.050,"))
        expectTrue(trace.contains("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":1,\"args\":{\"name\":\"steps\"}}"))
    }
}
