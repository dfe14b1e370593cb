#if canImport(Glibc)
import Glibc
#endif

/// The model's large flat arrays (page-table entries, the RMM's granule states) are read at
/// random, one entry per operation: on 4K pages nearly every read is also a TLB miss, and
/// every new 4K of a growing table a page fault. Arrays of at least `threshold` bytes ask
/// Linux for transparent huge pages (madvise MADV_HUGEPAGE, which `enabled = madvise`
/// honours) over the whole 2M pages of their buffer, capacity included. Elsewhere, or
/// when the kernel says no, nothing changes but speed. docs/PERFORMANCE.md.
public enum HugePages {
    /// Buffers smaller than this stay on 4K pages: a huge page is only worth it when a
    /// table spans many, and a buffer's last 2M page may hold little of it (resident
    /// memory figures).
    public static let threshold = 8 << 20
    static let hugePage: UInt = 2 << 20

    /// `array.reserveCapacity(capacity)`, the new buffer advised before anything is copied
    /// into it (a page the copy touched first would stay a 4K page).
    public static func reserve<T>(_ array: inout [T], capacity: Int) {
        guard capacity > array.capacity else { return }
        guard capacity * MemoryLayout<T>.stride >= threshold else { return array.reserveCapacity(capacity) }
        var grown: [T] = []
        grown.reserveCapacity(capacity)
        advise(&grown)
        grown.append(contentsOf: array)
        array = grown
    }

    /// Advises `array`'s buffer, capacity included, when it is large enough.
    static func advise<T>(_ array: inout [T]) {
        #if canImport(Glibc)
        let bytes = array.capacity * MemoryLayout<T>.stride
        guard bytes >= threshold else { return }
        array.withUnsafeMutableBufferPointer { b in
            // An empty array's buffer pointer is its storage's too (capacity reserved).
            guard let base = b.baseAddress else { return }
            let first = (UInt(bitPattern: base) + hugePage - 1) & ~(hugePage - 1)
            let end = (UInt(bitPattern: base) + UInt(bytes)) & ~(hugePage - 1)
            guard end > first, let p = UnsafeMutableRawPointer(bitPattern: first) else { return }
            _ = madvise(p, Int(end - first), MADV_HUGEPAGE)
        }
        #endif
    }
}
