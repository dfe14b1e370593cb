import ArgumentParser

/// The `cocomem` command: a thin layer over the library, one subcommand per file.
public struct Cocomem: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cocomem",
        abstract: "An executable model of memory management on confidential-computing hardware.",
        discussion: """
            cocomem models how the host kernel keeps its direct map consistent with what the
            hardware enforces, and reports it in the kernel's own formats.

            Examples:
              cocomem                                   # the built-in demo
              cocomem run examples/cpa-basics.yaml --meminfo
              cocomem check examples/*.yaml             # TAP
              cocomem compare examples/cpa-churn.yaml --policy never --policy rox --policy always
              cocomem meminfo --memory 64G --apply 'set_memory_decrypted pa:0x40000000 1'
              cocomem ptdump --e820 dmesg.txt --no-gbpages
              cocomem list steps
            """,
        version: "0.1.0",
        subcommands: [Demo.self, Run.self, Check.self, Compare.self, List.self, MeminfoCommand.self, PtdumpCommand.self, ListOperations.self, Bench.self],
        defaultSubcommand: Demo.self)

    public init() {}
}

/// A mistake on the command line, said plainly.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
