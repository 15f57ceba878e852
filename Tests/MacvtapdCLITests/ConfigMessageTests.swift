import MacvtapdTestSupport
import Testing

/// Configuration errors as the CLI prints them: what `plan` says, and the default path's note.
@Suite("configuration messages")
struct ConfigMessageTests {
    @Test func planOfAnInvalidConfigDoesNotClaimItChangedNothing() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let config = try directory.write("bad.yaml", "version: 2\nvms: {}\n")
        let plan = try await macvtapd(["plan", "-c", config])
        #expect(plan.status == 1)
        #expect(plan.stderr.hasSuffix("\(config): invalid configuration; no plan was made\n"))
        #expect(!plan.stderr.contains("nothing was changed"))
        let apply = try await macvtapd(["apply", "-c", config])
        #expect(apply.stderr.hasSuffix("\(config): invalid configuration; nothing was changed\n"))
    }

    /// In a mount namespace whose /etc is an empty tmpfs, the default /etc/macvtapd is missing.
    @Test func aMissingDefaultPathSaysItIsTheDefaultAndNamesTheFlag() async throws {
        let binary = try ChildProcess.macvtapdBinary()
        let run = try await ChildProcess.run(
            "/usr/bin/unshare", ["-m", "/bin/sh", "-c", "mount -t tmpfs none /etc && exec \"$0\" validate", binary])
        #expect(run.status == 1)
        #expect(
            run.stderr == """
                /etc/macvtapd: error: cannot read the configuration: No such file or directory
                note: /etc/macvtapd is the default configuration path; pass -c/--config PATH to read another file or directory
                /etc/macvtapd: invalid (1 error(s))

                """)
        let given = try await macvtapd(["validate", "-c", "/nonexistent/macvtapd"])
        #expect(!given.stderr.contains("note:"))
    }

    @Test func directoryLevelErrorsCarryTheFilePrefix() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("web.YAML", "version: 1\nvms: {}\n")
        try directory.write("web.yaml.bak", "version: 1\nvms: {}\n")
        let run = try await macvtapd(["validate", "-c", directory.path])
        #expect(run.status == 1)
        #expect(
            run.stderr.hasPrefix(
                "\(directory.path): error: the configuration directory holds no *.yaml or *.yml file; "
                    + "skipped 'web.YAML', 'web.yaml.bak': only names ending in .yaml or .yml (lower case) are read"))
    }
}
