import MacvtapdTestSupport
import Testing

/// `macvtapd validate` as operators and scripts run it: the built binary, its output and exit status.
@Suite("macvtapd validate")
struct ValidateCommandTests {
    private func validate(_ arguments: [String]) async throws -> ChildResult {
        try await ChildProcess.run(try ChildProcess.macvtapdBinary(), ["validate"] + arguments)
    }

    @Test func aValidFileExitsZero() async throws {
        let file = repositoryRoot + "/examples/macvtapd.yaml"
        let run = try await validate(["-c", file])
        #expect(run.status == 0)
        #expect(run.stdout == "\(file): valid, 2 VM(s), 3 binding(s)\n")
        #expect(run.stderr.isEmpty)
    }

    @Test func aValidDirectoryExitsZero() async throws {
        let directory = repositoryRoot + "/examples/conf.d"
        let run = try await validate(["--config", directory])
        #expect(run.status == 0)
        #expect(run.stdout == "\(directory): valid, 3 VM(s), 4 binding(s)\n")
    }

    @Test func anInvalidFileExitsOneWithEveryError() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let file = try directory.write(
            "bad.yaml",
            "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0: {host: eth0, mode: brige, hub: \"1\"}\n")
        let run = try await validate(["-c", file])
        #expect(run.status == 1)
        #expect(run.stdout.isEmpty)
        #expect(
            run.stderr == """
                \(file):6:32: error: invalid 'mode' 'brige'; allowed: bridge, vepa, private, passthru; did you mean 'bridge'?
                \(file):6:44: error: 'hub' must be a non-negative integer (a QEMU hub id, like 'hub: 10'), found the string '1'
                \(file): invalid (2 error(s))

                """)
    }

    @Test func aMissingPathIsInvalidNotAUsageError() async throws {
        let run = try await validate(["-c", "/nonexistent/macvtapd.yaml"])
        #expect(run.status == 1)
        #expect(
            run.stderr.contains(
                "/nonexistent/macvtapd.yaml: error: cannot read the configuration: No such file or directory"))
    }

    @Test func aWrongArgumentIsAUsageError() async throws {
        let run = try await validate(["--no-such-option"])
        #expect(run.status == 2)
        #expect(run.stderr.contains("Unknown option '--no-such-option'"))
    }
}
