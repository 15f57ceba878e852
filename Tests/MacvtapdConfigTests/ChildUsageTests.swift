import MacvtapdTestSupport
import Testing

/// What ChildProcess reports for a child is the child's, not the test runner's.
@Suite struct ChildUsageTests {
    /// A runner that peaked at 256 MB (the suite's own fixtures can): with posix_spawn and wait4's
    /// ru_maxrss, `/bin/true` was reported at the runner's peak.
    @Test func peakRSSIsTheChildsOwnWhateverTheRunnerUsed() async throws {
        let size = 256 << 20
        let ballast = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        defer { ballast.deallocate() }
        // Touch every page, so the runner's resident set really holds it.
        for offset in stride(from: 0, to: size, by: 4096) { ballast[offset] = 1 }
        let touched = stride(from: 0, to: size, by: 4096).reduce(0) { $0 + Int(ballast[$1]) }
        #expect(touched == size / 4096)
        let run = try await ChildProcess.run("/bin/true", [])
        #expect(run.status == 0)
        #expect(run.maxResidentKiB > 0 && run.maxResidentKiB < 16 * 1024, "used \(run.maxResidentKiB) KiB")
    }
}
