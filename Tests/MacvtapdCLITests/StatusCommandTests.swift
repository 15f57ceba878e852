import MacvtapdTestSupport
import Testing

/// `macvtapd status` on the files operators actually meet: missing, empty, garbage, from a newer
/// macvtapd, unreadable, and with `-c` listing the bindings that have no status yet.
@Suite("macvtapd status")
struct StatusCommandTests {
    private func status(_ text: String?, _ arguments: [String] = []) async throws -> (ChildResult, String) {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/status.json"
        if let text { try directory.write("status.json", text) }
        let run = try await macvtapd(["status", "--status-file", path] + arguments)
        return (run, path)
    }

    private func expectNoSwiftInternals(_ run: ChildResult) {
        for swiftInternal in ["DecodingError", "CodingKeys", "dataCorrupted", "Swift.", "Context("] {
            #expect(!run.stderr.contains(swiftInternal), "\(run.stderr)")
        }
    }

    @Test func anEmptyFileSaysItIsEmpty() async throws {
        let (run, path) = try await status("")
        #expect(run.status == 1)
        #expect(
            run.stderr == "\(path) is empty; apply and the daemon replace it whole, so something else truncated it\n")
        expectNoSwiftInternals(run)
    }

    @Test func garbageIsNotAStatusDocument() async throws {
        let (run, path) = try await status("hello, world\n")
        #expect(run.status == 1)
        #expect(run.stderr == "\(path) is not a macvtapd status document: it is not a JSON object\n")
        expectNoSwiftInternals(run)
    }

    @Test func aNewerFormatNamesBothVersions() async throws {
        let (run, path) = try await status(#"{"format_version": 2, "whatever": []}"#)
        #expect(run.status == 1)
        #expect(
            run.stderr == "\(path) has format_version 2, written by a newer macvtapd; "
                + "this macvtapd reads format_version 1\n")
    }

    @Test func aMissingFieldIsNamedWithItsPath() async throws {
        let (run, path) = try await status(
            #"{"format_version": 1, "updated": 1, "bindings": [{"vm": "web1", "nic": "nic0"}]}"#)
        #expect(run.status == 1)
        #expect(run.stderr == "\(path) is not a macvtapd status document: 'bindings[0].phase' is missing\n")
        expectNoSwiftInternals(run)
    }

    @Test func anUnreadableFileSaysWhy() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // Tests run as root, which reads any file: a directory is what stays unreadable.
        let run = try await macvtapd(["status", "--status-file", directory.path])
        #expect(run.status == 1)
        #expect(run.stderr == "cannot read \(directory.path): Is a directory\n")
    }

    @Test func aMissingFileSaysThereIsNoStatusYet() async throws {
        let (run, path) = try await status(nil)
        #expect(run.status == 1)
        #expect(run.stderr == "\(path): no status yet (has apply or the daemon run?)\n")
    }

    @Test func withConfigBindingsWithoutStatusAreListed() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let config = try directory.write("macvtapd.yaml", twoBindings)
        let document = """
            {"format_version": 1, "updated": 1, "bindings": [{"vm": "web1", "nic": "nic0", "phase": "HostMissing",
             "reason": "HostMissing", "message": "host eth0 does not exist", "since": 1, "attempts": 0}]}
            """
        let statusPath = try directory.write("status.json", document)
        let run = try await macvtapd(["status", "-c", config, "--status-file", statusPath])
        #expect(run.status == 0, "\(run.stderr)")
        // The first line says where the table comes from: a file no running daemon keeps current.
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("From \(statusPath), written 1970-01-01 00:00:01 UTC") == true)
        #expect(lines.first?.contains("no daemon is running") == true)
        let rows = lines.dropFirst().map { $0.split(separator: " ").map(String.init) }
        #expect(rows.count == 3)
        #expect(
            rows.dropFirst().map { Array($0.prefix(3)) } == [
                ["web1/nic0", "HostMissing", "HostMissing"], ["web1/nic1", "-", "NoStatusYet"],
            ])
        let without = try await macvtapd(["status", "--status-file", statusPath])
        #expect(without.stdout.split(separator: "\n").count == 3)
    }

    @Test func withConfigAndNoStatusFileEveryBindingIsListed() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let config = try directory.write("macvtapd.yaml", twoBindings)
        let run = try await macvtapd(["status", "-c", config, "--status-file", directory.path + "/none.json"])
        #expect(run.status == 1)
        #expect(run.stdout.contains("web1/nic0  -      NoStatusYet"))
        #expect(run.stdout.contains("web1/nic1  -      NoStatusYet"))
        #expect(run.stderr.contains("no status yet"))
    }
}
