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
        // Touch every page, so the runner's resident set really holds it; off the cooperative pool,
        // whose two threads every other test in the process shares.
        let touched = await offPool { [ballast = UncheckedBuffer(ballast)] in
            for offset in stride(from: 0, to: size, by: 4096) { ballast.buffer[offset] = 1 }
            return stride(from: 0, to: size, by: 4096).reduce(0) { $0 + Int(ballast.buffer[$1]) }
        }
        #expect(touched == size / 4096)
        let run = try await ChildProcess.run("/bin/true", [])
        #expect(run.status == 0)
        #expect(run.maxResidentKiB > 0 && run.maxResidentKiB < 16 * 1024, "used \(run.maxResidentKiB) KiB")
    }
}

/// The ballast crosses into the off-pool thread and back; the test awaits it, so no one else
/// touches it meanwhile.
private struct UncheckedBuffer: @unchecked Sendable {
    let buffer: UnsafeMutableRawBufferPointer
    init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }
}
