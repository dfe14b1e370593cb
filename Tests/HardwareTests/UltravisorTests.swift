import Testing
@testable import Hardware
import Expectations

/// The Ultravisor's calls, each outcome: import (first time cleared, after an export
/// verified and decrypted, refused for another page, not mapped, no configuration),
/// export (a no-op on a page that is not secure), destroy, pin shared, share and unshare,
/// and injected busy and error answers.
struct UltravisorTests {
    func fresh() -> (Ultravisor, Int) {
        var uv = Ultravisor()
        let (r, g) = uv.createConfiguration()
        expectTrue(r.ok)
        expectEqual(r.description, "cc 0 (UVC_CC_OK) rc 0x0001 (UVC_RC_EXECUTED)")
        return (uv, g!)
    }

    @Test func importClearsTheFirstTimeAndVerifiesAfterAnExport() {
        var (uv, g) = fresh()
        uv.setContent(0x100, 77)  // what the host left in the frame
        expectTrue(uv.convertToSecure(guest: g, gfn: 5, pfn: 0x100).ok)
        expectEqual(uv.contents(0x100), 0)
        expectTrue(uv.isSecure(0x100))
        expectTrue(!uv.hostAccessible(0x100))
        uv.setContent(0x100, 42)  // the guest writes
        expectTrue(uv.convertFromSecure(0x100).ok)
        let cipher = uv.contents(0x100)
        expectNotEqual(cipher, 42)
        expectTrue(!uv.isSecure(0x100))
        expectEqual(uv.configurations[g].exported[5], ExportRecord(cipher: cipher, plain: 42))
        // Swapped to another frame and imported there: verified, decrypted.
        uv.copyContent(from: 0x100, to: 0x200)
        expectTrue(uv.convertToSecure(guest: g, gfn: 5, pfn: 0x200).ok)
        expectEqual(uv.contents(0x200), 42)
        expectEqual(uv.configurations[g].exported[5], nil)
        expectEqual(uv.stats.imports, 2)
        expectEqual(uv.stats.exports, 1)
        // Importing the same page again is a no-op; into another guest page it is refused.
        expectTrue(uv.convertToSecure(guest: g, gfn: 5, pfn: 0x200).ok)
        expectEqual(uv.stats.imports, 2)
        let other = uv.convertToSecure(guest: g, gfn: 6, pfn: 0x200)
        expectEqual(other.cc, 1)
        expectEqual(other.rc, UVCResult.rcInvalidState)
    }

    @Test func aChangedExportFailsItsIntegrityCheck() {
        var (uv, g) = fresh()
        expectTrue(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).ok)
        uv.setContent(0x10, 9)
        expectTrue(uv.convertFromSecure(0x10).ok)
        uv.setContent(0x10, 1 << 62)  // a host or device write to the exported page
        let r = uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10)
        expectEqual(r.cc, 1)
        expectEqual(r.rc, nil)
        expectEqual(uv.stats.integrityFailures, 1)
        expectTrue(!uv.isSecure(0x10))
        expectEqual(r.description, "cc 1 (UVC_CC_ERROR): integrity check failed: the page is not what the UV exported")
    }

    @Test func refusalsAndNoOps() {
        var (uv, g) = fresh()
        let unmapped = uv.convertToSecure(guest: g, gfn: 1, pfn: nil)
        expectEqual(unmapped.cc, 1)
        expectEqual(unmapped.rc, 0x010a)
        expectEqual(uv.convertToSecure(guest: g + 1, gfn: 1, pfn: 0x10).rc, UVCResult.rcInvalidState)
        // Export and destroy of a page that is not secure change nothing and succeed.
        expectTrue(uv.convertFromSecure(0x10).ok)
        expectTrue(uv.destroyPage(0x10).ok)
        expectEqual(uv.stats.exports, 0)
        expectEqual(uv.stats.destroys, 0)
        // Destroy clears without a record.
        expectTrue(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).ok)
        uv.setContent(0x10, 3)
        expectTrue(uv.destroyPage(0x10).ok)
        expectEqual(uv.contents(0x10), 0)
        expectTrue(uv.configurations[g].exported.isEmpty)
        expectEqual(uv.stats.destroys, 1)
        // A destroyed configuration imports nothing and forgets its exports.
        expectTrue(uv.convertToSecure(guest: g, gfn: 2, pfn: 0x11).ok)
        expectTrue(uv.convertFromSecure(0x11).ok)
        expectTrue(uv.destroyConfiguration(g).ok)
        expectTrue(uv.configurations[g].exported.isEmpty)
        expectEqual(uv.convertToSecure(guest: g, gfn: 2, pfn: 0x11).cc, 1)
        expectEqual(uv.destroyConfiguration(g).cc, 1)
    }

    @Test func secureCPUs() {
        var (uv, g) = fresh()
        expectEqual(uv.secureCPU(g, create: false).cc, 1)  // none to destroy
        expectTrue(uv.secureCPU(g, create: true).ok)
        expectTrue(uv.secureCPU(g, create: true).ok)
        expectEqual(uv.configurations[g].cpus, 2)
        expectTrue(uv.secureCPU(g, create: false).ok)
        expectEqual(uv.configurations[g].cpus, 1)
        expectEqual(uv.secureCPU(g + 1, create: true).rc, UVCResult.rcInvalidState)
    }

    @Test func sharedPagesPinAndUnshare() {
        var (uv, g) = fresh()
        expectEqual(uv.pinShared(0x20).cc, 1)  // not secure
        expectTrue(uv.convertToSecure(guest: g, gfn: 3, pfn: 0x20).ok)
        let notShared = uv.pinShared(0x20)
        expectEqual(notShared.cc, 1)
        expectEqual(notShared.rc, UVCResult.rcInvalidState)
        expectEqual(uv.setShared(guest: g + 1, pfn: 0x20, shared: true).cc, 1)  // another guest's page
        expectTrue(uv.setShared(guest: g, pfn: 0x20, shared: true).ok)
        expectTrue(uv.hostAccessible(0x20))
        expectTrue(uv.isSecure(0x20))
        expectTrue(uv.pinShared(0x20).ok)
        expectEqual(uv.stats.pinsShared, 1)
        let unshare = uv.setShared(guest: g, pfn: 0x20, shared: false)
        expectEqual(unshare.cc, 1)
        expectEqual(unshare.command, .removeSharedAccess)
        expectEqual(uv.secure[0x20]?.shared, true)
    }

    @Test func injectedAnswers() {
        var (uv, g) = fresh()
        uv.inject(.convToSecStor, cc: 2, count: 2)
        expectEqual(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).cc, 2)
        expectEqual(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).cc, 2)
        expectTrue(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).ok)
        expectEqual(uv.stats.busy, 2)
        uv.inject(.convFromSecStor, cc: 1, count: 1)
        let r = uv.convertFromSecure(0x10)
        expectEqual(r.cc, 1)
        expectEqual(r.description, "cc 1 (UVC_CC_ERROR): injected")
        expectTrue(uv.isSecure(0x10))
        uv.inject(.convFromSecStor, cc: 1, count: 5)
        uv.inject(.convFromSecStor, cc: 1, count: 0)  // cancelled
        expectTrue(uv.convertFromSecure(0x10).ok)
        // uv_call repeats a busy or partial answer; only the import takes it once.
        expectTrue(uv.convertToSecure(guest: g, gfn: 1, pfn: 0x10).ok)
        uv.inject(.convFromSecStor, cc: 3, count: 3)
        expectTrue(uv.convertFromSecure(0x10).ok)
        expectEqual(uv.stats.busy, 5)
        expectTrue(uv.injected.isEmpty)
        uv.inject(.createSecConf, cc: 1, count: 1)
        expectEqual(uv.createConfiguration().1, nil)
        expectNotEqual(uv.createConfiguration().1, nil)
        // A page another guest shared: the import moves it (the misc feature), cleared.
        let (_, h) = uv.createConfiguration()
        expectTrue(uv.convertToSecure(guest: g, gfn: 2, pfn: 0x30).ok)
        expectTrue(uv.setShared(guest: g, pfn: 0x30, shared: true).ok)
        uv.setContent(0x30, 5)
        expectTrue(uv.convertToSecure(guest: h!, gfn: 7, pfn: 0x30).ok)
        expectEqual(uv.secure[0x30], SecurePage(guest: h!, gfn: 7))
        expectEqual(uv.contents(0x30), 0)
    }

    /// The command codes Linux uses (arch/s390/include/asm/uv.h).
    @Test func commandCodes() {
        expectEqual(UVCCommand.allCases.map(\.rawValue), [0x0100, 0x0101, 0x0120, 0x0121, 0x0200, 0x0201, 0x0202, 0x0341, 0x1000, 0x1001])
        expectEqual(UVCCommand.convFromSecStor.shortName, "conv_from_sec_stor")
    }
}
