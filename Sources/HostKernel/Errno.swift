/// A kernel error number, printed the way kernel developers write it (`-ENOMEM`).
/// Linux include/uapi/asm-generic/errno-base.h.
public enum Errno: Int32, Sendable, CustomStringConvertible {
    case EIO = 5
    case ENOMEM = 12
    case EFAULT = 14
    case EBUSY = 16
    case EINVAL = 22

    public var description: String { "-\(name)" }
    public var name: String {
        switch self {
        case .EIO: "EIO"
        case .ENOMEM: "ENOMEM"
        case .EFAULT: "EFAULT"
        case .EBUSY: "EBUSY"
        case .EINVAL: "EINVAL"
        }
    }
}

/// What a kernel function returned: 0 or a negative errno.
public enum KernelStatus: Hashable, Sendable, CustomStringConvertible {
    case ok
    case error(Errno)

    public var description: String {
        switch self {
        case .ok: "ok"
        case .error(let e): e.description
        }
    }
}

/// A request the model cannot even begin: wrong addresses, impossible sizes. Unlike an
/// `Errno`, this is the user's mistake, not the kernel's answer.
public struct HostKernelError: Error, Hashable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
