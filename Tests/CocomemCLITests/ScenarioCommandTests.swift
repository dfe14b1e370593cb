import Foundation
import Testing
@testable import CocomemCLI
import Expectations

/// run, check, compare, list and demo, through the built binary.
struct ScenarioCommandTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func example(_ name: String) -> String { root.appendingPathComponent("examples/\(name)").path }
    static func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try CommandLineTests.run(args) }

    static func examples() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("examples").path)
            .filter { $0.hasSuffix(".yaml") }.sorted().map(example)
    }

    /// All but map-16t, which `theExampleMapsInDocsCountTheirRegions` (ReportsTests) runs with
    /// the same options as `check` (in a debug build it takes longer than every other example
    /// together); CI's release `check` runs every example.
    @Test func everyExamplePassesCheck() throws {
        let files = try Self.examples().filter { !$0.hasSuffix("/map-16t.yaml") }
        expectTrue(files.count >= 6)
        let r = try Self.run(["check"] + files)
        expectEqual(r.status, 0, "\(r.out)")
        expectTrue(r.out.hasPrefix("TAP version 13\n1.."))
        expectTrue(!r.out.contains("not ok"))
        // Every example has at least one expectation or check.
        for f in files { #expect(r.out.contains(f + ":"), "no test point from \(f)") }
    }

    @Test func checkReportsAFailureAsNotOkAndExitsOne() throws {
        let path = try CommandLineTests.writeTemp("""
            name: failing
            machine: {memory: 4G}
            steps:
              - set_memory_ro: {pa: 0x40000000}
                expect: -ENOMEM
            check:
              - directmap: {1g: "== 3G"}
            """)
        let r = try Self.run(["check", path])
        expectEqual(r.status, 1)
        #expect(r.out == """
            TAP version 13
            1..2
            not ok 1 - \(path):4 step 1 set_memory_ro = -ENOMEM
              ---
              message: "got: ok"
              ...
            not ok 2 - \(path):7 check directmap 1g == 3G
              ---
              message: "1g is 2G"
              ...

            """)
    }

    /// Separate processes hash differently, so this catches any Dictionary order in output.
    @Test func outputIsByteIdenticalAcrossProcesses() throws {
        let trace1 = NSTemporaryDirectory() + "cocomem-t1-\(UUID().uuidString).json"
        let trace2 = NSTemporaryDirectory() + "cocomem-t2-\(UUID().uuidString).json"
        let svg1 = NSTemporaryDirectory() + "cocomem-s1-\(UUID().uuidString).svg"
        let svg2 = NSTemporaryDirectory() + "cocomem-s2-\(UUID().uuidString).svg"
        let f = Self.example("cpa-basics.yaml")
        let a = try Self.run(["run", f, "--json", "--sample", "3", "--trace", trace1, "--svg", svg1])
        let b = try Self.run(["run", f, "--json", "--sample", "3", "--trace", trace2, "--svg", svg2])
        expectEqual(a.status, 0)
        expectEqual(a.out, b.out)
        try expectEqual(String(contentsOfFile: trace1, encoding: .utf8), String(contentsOfFile: trace2, encoding: .utf8))
        try expectEqual(String(contentsOfFile: svg1, encoding: .utf8), String(contentsOfFile: svg2, encoding: .utf8))
        let c1 = try Self.run(["run", Self.example("cpa-churn.yaml"), "--csv"])
        let c2 = try Self.run(["run", Self.example("cpa-churn.yaml"), "--csv"])
        expectEqual(c1.out, c2.out)
        expectTrue(c1.out.hasPrefix("metric,value\ndirectmap_4k_kb,"))
    }

    @Test func jsonHasStepsMetricsAndChecksInOrder() throws {
        let r = try Self.run(["run", Self.example("boot-e820.yaml"), "--json"])
        expectEqual(r.status, 0)
        expectTrue(r.out.hasPrefix("{\n  \"scenario\": \"boot-e820\",\n  \"file\": "))
        expectTrue(r.out.contains("\"directmap_4k_kb\": 2048,\n    \"directmap_2m_kb\": 1046528,\n    \"directmap_1g_kb\": 24117248,"))
        expectTrue(r.out.hasSuffix("\"invariant_failure\": null,\n  \"passed\": true\n}\n"))
    }

    @Test func traceIsChromeTraceEventJSON() throws {
        let path = NSTemporaryDirectory() + "cocomem-trace-\(UUID().uuidString).json"
        let r = try Self.run(["run", Self.example("cpa-basics.yaml"), "--trace", path, "--quiet"])
        expectEqual(r.status, 0)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let events = try #require(object?["traceEvents"] as? [[String: Any]])
        expectEqual(events.filter { $0["ph"] as? String == "X" }.count, 18)
        expectTrue(events.contains { $0["ph"] as? String == "C" && $0["name"] as? String == "DirectMap kB" })
        let first = try #require(events.first { $0["ph"] as? String == "X" })
        expectEqual(first["name"] as? String, "set_memory_ro")
        expectEqual((first["args"] as? [String: Any])?["result"] as? String, "ok")
    }

    @Test func meminfoAndPtdumpAtAStep() throws {
        let r = try Self.run(["run", Self.example("cpa-basics.yaml"), "--meminfo", "--at", "0"])
        expectEqual(r.status, 0)
        expectTrue(r.out.contains("/proc/meminfo after step 0:\nDirectMap4k:        2048 kB\nDirectMap2M:     1046528 kB\nDirectMap1G:     7340032 kB\n"))
        let p = try Self.run(["run", Self.example("cpa-basics.yaml"), "--ptdump"])
        expectTrue(p.out.contains("ptdump at the end:\n---[ User Space ]---\n"))
        expectTrue(p.out.contains("\n---[ Low Kernel Mapping ]---\n"))
    }

    @Test func svgAndHtmlAreWritten() throws {
        let svg = NSTemporaryDirectory() + "cocomem-\(UUID().uuidString).svg"
        let html = NSTemporaryDirectory() + "cocomem-\(UUID().uuidString).html"
        let r = try Self.run(["run", Self.example("split-scatter.yaml"), "--svg", svg, "--html", html, "--color", "leaf-size"])
        expectEqual(r.status, 0)
        let s = try String(contentsOfFile: svg, encoding: .utf8)
        expectTrue(s.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        expectTrue(s.contains("4K, set_memory_4k (never collapses): "))
        expectTrue(s.contains(">0x0007c0000000</text>"))  // the last of 32 rows
        let h = try String(contentsOfFile: html, encoding: .utf8)
        expectTrue(h.contains("<svg"))
        expectTrue(h.contains("metric"))
    }

    @Test func compareRunsEachPolicyInOrder() throws {
        let r = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--policy", "rox", "--policy", "always"])
        // The file's metric check expects rox's collapse: `never` fails it, and compare says so.
        expectEqual(r.status, 1)
        let rows = r.out.split(separator: "\n", omittingEmptySubsequences: false).map { $0.split(separator: " ").map(String.init) }
        expectEqual(rows[0], ["scenario", "cpa-basics,", "slot", "host.cpa-collapse,", "seed", "7"])
        expectEqual(rows[2], ["metric", "never", "rox", "always"])
        expectTrue(rows.contains(["direct_map_level2_collapses", "0", "1", "1"]))
        expectTrue(rows.contains(["directmap_4k_kb", "14336", "12288", "12288"]))
        expectTrue(rows.contains(["expectations+checks", "FAIL:", "metric", "pass", "pass"]))
        #expect(r.out.hasSuffix("\n10 metrics zero in every run not shown (--show-zero shows them)\n\nfailed:\n"
            + "  never: metric direct_map_level2_collapses == 1, pgtable_alloc_failures == 1\n"))
        expectTrue(!rows.contains { $0.first == "cache_flush_pages" })
        let all = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--policy", "rox", "--show-zero", "--allow-fail"])
        expectEqual(all.status, 0)
        expectTrue(all.out.contains("\ncache_flush_pages "))
        expectTrue(!all.out.contains("not shown"))
        let csv = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--policy", "rox", "--csv"])
        expectTrue(csv.out.hasPrefix("metric,never,rox\nseed,7,7\npolicy:host.cpa-collapse,never,rox\ndirectmap_4k_kb,"))
        expectTrue(csv.out.hasSuffix("\ncheck:invariants,pass,pass\n\"check:metric direct_map_level2_collapses == 1, pgtable_alloc_failures == 1\",fail,pass\npassed,false,true\n"))
        let md = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--policy", "rox", "--markdown",
                               "--metrics", "direct_map_level2_collapses,directmap_4k_kb"])
        #expect(md.out == """
            scenario `cpa-basics`, slot `host.cpa-collapse`, seed 7

            | metric | never | rox |
            |---|---:|---:|
            | direct_map_level2_collapses | 0 | 1 |
            | directmap_4k_kb | 14336 | 12288 |
            | expectations+checks | FAIL: metric | pass |

            failed:
              never: metric direct_map_level2_collapses == 1, pgtable_alloc_failures == 1

            """)
        let json = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--json", "--metrics", "errors"])
        expectTrue(json.out.contains("\"seed\": 7"))
        expectTrue(json.out.contains("\"policies\": {\n        \"host.cpa-collapse\": \"never\""))
        expectTrue(json.out.contains("\"failed\": [\n        \"metric direct_map_level2_collapses == 1, pgtable_alloc_failures == 1\"\n      ]"))
        expectTrue(json.out.contains("\"check\": \"invariants\",\n          \"passed\": true"))
        let bad = try Self.run(["compare", Self.example("cpa-basics.yaml"), "--policy", "never", "--metrics", "errors,eros"])
        expectEqual(bad.status, 1)
        expectTrue(bad.err.contains("--metrics: no metric 'eros' on this machine; did you mean 'errors'?"))
    }

    @Test(arguments: [
        (["compare", "examples/cpa-churn.yaml", "--policy", "sometimes"], "--policy 'sometimes': no such policy; valid: never, rox, always"),
        (["compare", "examples/cpa-churn.yaml", "--policy", "rox", "--slot", "host.nothing"], "--slot 'host.nothing': not a slot of this scenario's machine; valid: host.cpa-collapse"),
        (["compare", "examples/cpa-churn.yaml", "--policy", "rox", "--slot", "host.directmap-policy"], "--slot 'host.directmap-policy': not a slot of this scenario's machine; valid: host.cpa-collapse"),
        (["compare", "examples/snp-kvm.yaml", "--policy", "rox", "--slot", "host.directmap-policy"], "--policy 'rox' is not a policy of host.directmap-policy; valid: none, split-on-assign"),
        (["compare", "examples/snp-kvm.yaml", "--policy", "never"], "several slots fit (host.cpa-collapse, guest.cpa-collapse); choose one with --slot"),
        (["run", "examples/cpa-basics.yaml", "--at", "99"], "--at 99: examples/cpa-basics.yaml has 18 steps; valid: 0 to 18"),
        (["run", "examples/cpa-basics.yaml", "--color", "rainbow"], "--color 'rainbow': valid: leaf-size, ownership"),
        (["run", "examples/cpa-basics.yaml", "--json", "--meminfo"], "cannot be mixed with --json or --csv"),
        (["run", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read the file"),
        (["run", "examples/cpa-basics.yaml", "--check", "--check-every", "0"], "--check-every 0: give a number of steps, 1 or more"),
        (["list", "everything"], "everything"),
    ])
    func badCommandLinesAreClearErrors(_ args: [String], _ message: String) throws {
        let fixed = args.map { $0.hasPrefix("examples/") ? Self.root.appendingPathComponent($0).path : $0 }
        let r = try Self.run(fixed)
        expectNotEqual(r.status, 0)
        let expected = message.replacingOccurrences(of: "examples/", with: Self.root.path + "/examples/")
        expectTrue(r.err.contains(expected), "stderr: \(r.err)")
    }

    @Test func scenarioErrorNamesFileLineColumnAndField() throws {
        let path = try CommandLineTests.writeTemp("name: bad\nmachine: {memory: 4G}\nsteps:\n  - set_memory_ro: {pa: 0x40000000, pages: 2}\n")
        let r = try Self.run(["run", path])
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("\(path):4:37: steps[1].set_memory_ro.pages: unknown field 'pages'; did you mean 'numpages'?; valid: addr, numpages, guest, gpa, pa"))
    }

    /// The seed thread's question, answered by compare: which policies keep the host up when
    /// a kernel stack shares a 2M region with a guest-private page.
    @Test func compareAnswersTheKernelStackQuestion() throws {
        let r = try Self.run(["compare", Self.example("snp-directmap-policies.yaml"), "--policy", "none", "--policy", "split-on-assign",
                              "--policy", "proactive-4k", "--policy", "unmap-private", "--policy", "split-on-fault", "--policy", "coalesce"])
        expectEqual(r.status, 1)  // none, unmap-private and split-on-fault fail the file's checks
        expectTrue(r.out.contains("\n  none: step 2 host-write: expected ok, got #PF(RMP): double fault; no-host-crash\n"))
        let rows = r.out.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        expectTrue(rows.contains(["rmp_fault_double_fault", "1", "0", "0", "0", "1", "0"]))
        expectTrue(rows.contains(["host_crashes", "1", "0", "0", "1", "1", "0"]))  // unmap-private: the stray read oopses
        expectTrue(rows.contains(["ciphertext_reads", "1", "1", "1", "0", "1", "1"]))
        expectTrue(rows.contains(["directmap_4k_kb", "2048", "6144", "6144", "6144", "4096", "2048"]))
    }

    @Test func listShowsEachRegistry() throws {
        for what in ["steps", "policies", "workloads", "checks", "invariants", "metrics", "archs"] {
            let r = try Self.run(["list", what])
            expectEqual(r.status, 0)
            expectTrue(!r.out.isEmpty)
        }
        let workloads = try Self.run(["list", "workloads"]).out
        expectTrue(workloads.hasPrefix("cpa-churn "))
        expectTrue(workloads.split(separator: "\n")[0].hasSuffix(" set_memory_decrypted then set_memory_encrypted on random RAM pages (swiotlb-style bounce buffers on an SME host)"))
        let steps = try Self.run(["list", "steps"]).out
        expectTrue(steps.contains("\nrmpupdate "))
        expectTrue(steps.contains("[x86-snp]"))
        expectTrue(steps.contains("(also: guest_set_memory_decrypted)"))
        expectTrue(steps.contains("\n  numpages "))
        expectTrue(steps.contains("pages to change; default 1\n"))
        let metrics = try Self.run(["list", "metrics"]).out
        expectTrue(metrics.contains("[x86-snp]"))
        expectTrue(metrics.contains("  psmash "))
        expectTrue(metrics.contains("  directmap_4k_kb "))
    }

    /// `--guest` prints the guest's own kernel: its DirectMap lines after a conversion split
    /// its first 2M leaf, and its page table.
    @Test func meminfoAndPtdumpOfAGuest() throws {
        let path = try CommandLineTests.writeTemp("""
            name: guest-map
            machine: {arch: x86-snp, memory: 4G}
            guests:
              - {name: vm0, asid: 1, memory: 16M, placement: {pa: 0x40000000}}
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - set_memory_decrypted: {guest: vm0, gpa: 0x200000}
                expect: ok
            """)
        let r = try Self.run(["run", path, "--meminfo", "--guest", "vm0"])
        expectEqual(r.status, 0)
        expectTrue(r.out.contains("/proc/meminfo of guest vm0 at the end:\nDirectMap4k:        2048 kB\nDirectMap2M:       14336 kB\nDirectMap1G:           0 kB\n"), "\(r.out)")
        let p = try Self.run(["run", path, "--ptdump", "--guest", "vm0"])
        expectTrue(p.out.contains("ptdump of guest vm0 at the end:\n---[ User Space ]---\n"))
        expectTrue(p.out.contains("\n---[ Low Kernel Mapping ]---\n"))
        // The decrypted page is a range of its own (its C-bit differs, as note_page sees it).
        #expect(p.out.contains("0xffff888000200000-0xffff888000201000           4K     RW                 GLB NX pte\n"
            + "0xffff888000201000-0xffff888000400000        2044K     RW                 GLB NX pte\n"), "\(p.out)")
        try expectTrue(Self.run(["run", path, "--meminfo", "--guest", "vm9"]).err.contains("--guest 'vm9': "))
        try expectNotEqual(Self.run(["run", path, "--guest", "vm0"]).status, 0)
    }

    /// `--ptdump --process` prints a process's page table: ptdump's runs (split where the
    /// C-bit differs) and each entry's raw value; an unknown process is an error naming those there.
    @Test func ptdumpOfAProcess() throws {
        let path = Self.example("user-vvar-sev-guest.yaml")
        let p = try Self.run(["run", path, "--ptdump", "--guest", "sev0", "--process", "date"])
        expectEqual(p.status, 0)
        expectTrue(p.out.contains("ptdump of process date of guest sev0 at the end:\n---[ User Space ]---\n"))
        #expect(p.out.contains("0x00007ffff7ffb000-0x00007ffff7ffc000           4K USR ro                     NX pte\n"
            + "0x00007ffff7ffc000-0x00007ffff7ffd000           4K USR ro                     NX pte\n"), "\(p.out)")
        #expect(p.out.contains("---[ entries ]---\n0x00007ffff7ffb000 pte 0x8000800003fff225 [present user nx enc special]\n"
            + "0x00007ffff7ffc000 pte 0x8000000003ffe225 [present user nx special]\n"))
        let bad = try Self.run(["run", path, "--ptdump", "--process", "date"])
        #expect(bad.status != 0 && bad.err.contains("--process 'date': no such process in the host (the scenario declares none there)"), "\(bad.err)")
        try expectTrue(Self.run(["run", path, "--process", "date"]).err.contains("--process chooses whose page table --ptdump prints"))
    }

    @Test func compareSuggestsAPolicyForATypo() throws {
        let r = try Self.run(["compare", Self.example("snp-directmap-policies.yaml"), "--policy", "split-on-asign"])
        expectNotEqual(r.status, 0)
        expectTrue(r.err.contains("--policy 'split-on-asign': no such policy; did you mean 'split-on-assign'?"))
    }
}
