/// The memory type of a mapping as the kernel selects it through PAT (x86) or MAIR (arm64).
/// Linux arch/x86/mm/pat/memtype.c: the PAT layout WB, WC, UC-, UC in entries 0-3.
public enum MemoryType: UInt8, CaseIterable, Sendable, CustomStringConvertible {
    case writeBack = 0
    case writeCombining = 1
    case uncachedMinus = 2
    case uncached = 3

    public var description: String { ["WB", "WC", "UC-", "UC"][Int(rawValue)] }
}
