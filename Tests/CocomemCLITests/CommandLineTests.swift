import Foundation
import Testing
@testable import CocomemCLI
import Expectations

/// The command line end to end: the built `cocomem` binary, its output and its exit status.
struct CommandLineTests {
    /// The `cocomem` executable next to the test bundle in the build folder.
    static func binary() throws -> URL {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("cocomem")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug/cocomem")
    }

    static func run(_ args: [String], input file: String? = nil) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = try binary()
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    static func writeTemp(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "cocomem-\(UUID().uuidString).txt"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let e820 = """
        BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
        BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
        BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
        """

    /// The bench's worker names are internal, but a wrong one is still a clear error.
    @Test func benchRefusesAnUnknownWorker() throws {
        let r = try Self.run(["bench", "--worker", "bogus"])
        expectEqual(r.status, 1)
        expectEqual(r.err, "Error: unknown bench worker bogus\n")
    }

    @Test func meminfoFromAnE820File() throws {
        let path = try Self.writeTemp(Self.e820)
        let r = try Self.run(["meminfo", "--e820", path])
        expectEqual(r.status, 0)
        expectEqual(r.out, "DirectMap4k:        2048 kB\nDirectMap2M:     1046528 kB\nDirectMap1G:    24117248 kB\n")
        let n = try Self.run(["meminfo", "--e820", path, "--no-gbpages"])
        expectEqual(n.out, "DirectMap4k:        2048 kB\nDirectMap2M:    25163776 kB\n")
    }

    @Test func meminfoAfterApplyShowsTheSplit() throws {
        let r = try Self.run(["meminfo", "--memory", "64G", "--apply", "set_memory_decrypted 0xffff888040000000 1"])
        expectEqual(r.status, 0)
        expectEqual(r.out, "DirectMap4k:        4096 kB\nDirectMap2M:     2093056 kB\nDirectMap1G:    65011712 kB\n")
        expectEqual(r.err, "set_memory_decrypted 0xffff888040000000 1 = ok\n")
    }

    @Test func failAllocGivesENOMEM() throws {
        let r = try Self.run(["meminfo", "--memory", "4G", "--fail-alloc", "--apply", "set_memory_4k pa:0x40000000 1"])
        expectEqual(r.status, 0)
        expectEqual(r.err, "set_memory_4k 0xffff888040000000 1 = -ENOMEM\n")
    }

    @Test func ptdumpPrintsTheDirectMapSection() throws {
        let r = try Self.run(["ptdump", "--memory", "4G"])
        expectEqual(r.status, 0)
        // The direct map's first page shows under "LDT remap", one entry past its marker.
        #expect(r.out.contains("---[ LDT remap ]---\n0xffff888000000000-0xffff888000001000           4K     RW                 GLB NX pte\n"
            + "---[ Low Kernel Mapping ]---\n0xffff888000001000-0xffff888000200000        2044K     RW                 GLB NX pte\n"))
    }

    @Test func demoRunsWithNoArguments() throws {
        let r = try Self.run([])
        expectEqual(r.status, 0)
        #expect(r.out == (try Demo.text()) + "\n")
    }

    @Test(arguments: [
        (["meminfo", "--memory", "lots"], "--memory 'lots': not a size"),
        (["meminfo", "--memory", "64G", "--apply", "set_memory_bogus 0x0 1"], "unknown operation 'set_memory_bogus'; valid operations: set_memory_4k"),
        (["meminfo", "--memory", "64G", "--apply", "set_memory_ro 0xffff888040000001 1"], "is not page-aligned"),
        (["meminfo", "--memory", "64G", "--apply", "set_memory_ro pa:0x2000000000 1"], "is not inside the direct map"),
        (["meminfo", "--memory", "64G", "--apply", "set_memory_ro 0xffff888040000000"], "set_memory_ro takes 2 arguments (ADDR NUMPAGES), got 1"),
        (["meminfo", "--e820", "/nonexistent/e820.txt"], "--e820 /nonexistent/e820.txt: cannot read the file (No such file or directory)"),
        (["meminfo", "--memory", "64G", "--e820", "x"], "give either --e820 or --memory, not both"),
        (["meminfo", "--memory", "128T"], "past the 64T the direct map can hold"),
    ])
    func badInputIsAClearErrorAndExitStatusOne(_ args: [String], _ message: String) throws {
        let r = try Self.run(args)
        expectEqual(r.status, 1)
        expectTrue(r.err.contains(message), "stderr was: \(r.err)")
        expectTrue(r.out.isEmpty)
    }

    @Test func malformedE820NamesFileAndLine() throws {
        let path = try Self.writeTemp("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\nBIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] RAM\n")
        let r = try Self.run(["meminfo", "--e820", path])
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("\(path): e820 line 2: unknown type 'RAM'"))
    }

    @Test func overlappingE820IsRefused() throws {
        let path = try Self.writeTemp("BIOS-e820: [mem 0x0000000000000000-0x00000000bfffffff] usable\nBIOS-e820: [mem 0x0000000000100000-0x00000000001fffff] reserved\n")
        let r = try Self.run(["ptdump", "--e820", path])
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("e820 line 2: range 0x100000-0x1fffff overlaps line 1"))
    }

    @Test func unknownSubcommandIsAnError() throws {
        let r = try Self.run(["frobnicate"])
        expectNotEqual(r.status, 0)
    }
}
