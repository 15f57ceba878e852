import MacvtapdTestSupport
import Testing

/// Duration flags as users type them: units parse, nonsense is a usage error (exit 2), never a crash.
@Suite("duration flags")
struct DurationFlagTests {
    @Test(arguments: ["nan", "inf", "1e17", "5x", "", "1.2.3", "0x10", "s"])
    func aMalformedQMPTimeoutIsAUsageError(_ value: String) async throws {
        let run = try await macvtapd(["plan", "-c", "/nonexistent", "--qmp-timeout", value])
        #expect(run.status == 2)
        #expect(run.stderr.contains("is not a duration; write a number with a unit (500ms, 30s, 2m, 1h)"))
        #expect(!run.stderr.contains("Fatal error"))
    }

    @Test(arguments: ["0", "0s", "0ms", "--qmp-timeout=-1", "--qmp-timeout=-5s"])
    func zeroAndNegativeTimeoutsAreUsageErrors(_ value: String) async throws {
        let arguments = value.hasPrefix("--") ? [value] : ["--qmp-timeout", value]
        let run = try await macvtapd(["plan", "-c", "/nonexistent"] + arguments)
        #expect(run.status == 2)
        #expect(run.stderr.contains("is not a positive duration"))
    }

    @Test(arguments: ["11m", "1h", "99999999h", "1ms", "0.001"])
    func anOutOfBoundsTimeoutIsAUsageError(_ value: String) async throws {
        let run = try await macvtapd(["plan", "-c", "/nonexistent", "--qmp-timeout", value])
        #expect(run.status == 2)
        #expect(run.stderr.contains("is out of range; it must be between 10ms and 10m"))
    }

    /// The configuration is read only after the flags parsed: exit 1 "invalid configuration" proves it.
    @Test(arguments: ["500ms", "30s", "2m", "5", "0.5", "10m"])
    func unitsAndBareSecondsParse(_ value: String) async throws {
        let run = try await macvtapd(["plan", "-c", "/nonexistent", "--qmp-timeout", value])
        #expect(run.status == 1)
        #expect(run.stderr.contains("invalid configuration"))
    }

    @Test(arguments: ["0", "nan", "50ms", "2d"])
    func aBadResyncIsAUsageError(_ value: String) async throws {
        let run = try await macvtapd(["run", "-c", "/nonexistent", "--resync", value])
        #expect(run.status == 2)
        #expect(run.stderr.contains("for '--resync <duration>'"))
    }

    /// `--resync 30s` was a usage error before durations took units: the daemon now starts (and is
    /// still running when `timeout` stops it).
    @Test func resyncAcceptsUnits() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let config = try directory.write("macvtapd.yaml", "version: 1\nvms: {}\n")
        let run = try await ChildProcess.run(
            "/usr/bin/timeout",
            [
                "-s", "TERM", "1", try ChildProcess.macvtapdBinary(), "run", "--resync", "30s", "-c", config,
                "--status-file", directory.path + "/status.json", "--device-dir", directory.path + "/dev",
                "--metrics-file", "", "--udev", "off", "--control-socket", directory.path + "/run/control.sock",
            ])
        #expect(run.status == 124, "stderr: \(run.stderr)")
        #expect(!run.stderr.contains("Error:"))
    }
}
