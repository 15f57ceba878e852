import Foundation
import MacvtapdConfig
import MacvtapdCore
import MacvtapdTestSupport
import Testing

/// "Billion laughs": nine levels of nine aliases, 9^9 ≈ 387 million nodes once expanded.
func aliasBomb(levels: Int = 9, width: Int = 9, asKey: Bool = false) -> String {
    var lines = ["version: 1", "l0: &l0 [" + Array(repeating: "\"lol\"", count: width).joined(separator: ",") + "]"]
    for level in 1..<levels {
        lines.append(
            "l\(level): &l\(level) [" + Array(repeating: "*l\(level - 1)", count: width).joined(separator: ",") + "]")
    }
    // As a mapping key, the bomb defeats composers that hash keys (Yams' does) before anyone can count.
    lines += asKey ? ["vms:", "  ? *l\(levels - 1)", "  : {}"] : ["vms: {big: *l\(levels - 1)}"]
    return lines.joined(separator: "\n") + "\n"
}

@Suite("Hostile and broken input is refused quickly, with positions")
struct HostileInputTests {
    // The parses below are CPU-bound for seconds under a sanitizer: they run off Swift's two-thread
    // cooperative pool (offPool), where they starved every async test beside them (ControllerTests
    // failed whole under `make test-asan`), and the time measured is the parse's own.
    @Test(arguments: [false, true])
    func aliasBombIsRejectedQuickly(asKey: Bool) async {
        let (result, elapsed) = await offPool {
            let start = ContinuousClock.now
            let result = ConfigLoader.load([ConfigSource(path: "bomb.yaml", text: aliasBomb(asKey: asKey))])
            return (result, ContinuousClock.now - start)
        }
        #expect(elapsed < .seconds(1))
        #expect(result.desired == nil)
        // Levels 0-4 weigh 10, 91, 820, 7381 and 66430 nodes: the first '*l4' passes the 100000 budget.
        #expect(
            result.diagnostics.map(\.description) == [
                "bomb.yaml:7:10: error: alias '*l4' expands the document beyond 100000 nodes; "
                    + "anchors and aliases may not multiply the document past that limit"
            ])
    }

    @Test func aliasBombThroughTheBinaryStaysWithinOneSecondAnd50MB() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let file = try directory.write("bomb.yaml", aliasBomb(levels: 12, width: 20))
        let run = try await ChildProcess.run(try ChildProcess.macvtapdBinary(), ["validate", "-c", file])
        #expect(run.status == 1)
        #expect(run.stderr.contains("expands the document beyond 100000 nodes"))
        // The child's own CPU time and peak RSS (ChildProcess.usageWrapper): neither the machine's
        // load nor the test runner's memory is the binary's.
        #expect(run.cpuSeconds < 1, "took \(run.cpuSeconds) s of CPU (\(run.seconds) s wall)")
        #expect(run.maxResidentKiB < 50 * 1024, "used \(run.maxResidentKiB) KiB")
    }

    @Test func aliasesWithinTheBudgetAreFine() throws {
        let yaml = """
            version: 1
            defaults: &d {mode: vepa}
            vms:
              a: {qmp: /run/a.sock, nics: {n0: &nic {host: eth0}, n1: *nic}}
            """
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", text: yaml)])
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.desired?.bindings.map(\.host) == [.name("eth0"), .name("eth0")])
    }

    @Test func aRecursiveAliasIsAnUndefinedAlias() {
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", text: "version: 1\nvms: &v {a: *v}\n")])
        #expect(
            result.diagnostics.map(\.description) == [
                "t.yaml:2:13: error: alias '*v' refers to no anchor '&v' defined before it"
            ])
    }

    @Test func aLargeDocumentWithoutAliasesHitsTheNodeBudgetToo() {
        let limits = ConfigLimits(maxNodesPerFile: 50)
        let yaml = "version: 1\nvms: {}\nx: [" + Array(repeating: "1", count: 100).joined(separator: ",") + "]\n"
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", text: yaml)], limits: limits)
        // Seven nodes come before the sequence items; the 44th item, at column 91, is node 51.
        #expect(
            result.diagnostics.map(\.description) == [
                "t.yaml:3:91: error: the document has more than 50 nodes, the limit for one file"
            ])
    }

    @Test func deepNestingIsRefusedPastAThousandLevels() async {
        let yaml = "version: 1\nvms: " + String(repeating: "[", count: 5000) + "\n"
        let result = await offPool { ConfigLoader.load([ConfigSource(path: "t.yaml", text: yaml)]) }
        #expect(result.desired == nil)
        #expect(result.diagnostics.first?.message.contains("Maximum nesting level reached") == true)
        // The root mapping is level 1 and the first '[' (column 6) level 2: level 1001 is column 1005.
        #expect(result.diagnostics.first?.location?.line == 2)
        #expect(result.diagnostics.first?.location?.column == 1005)
    }

    @Test func aFileOverTheSizeLimitIsRefusedBeforeParsing() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // Garbage that would be a syntax error if it were parsed: only the size is reported.
        let file = try directory.write("big.yaml", bytes: [UInt8](repeating: UInt8(ascii: "["), count: (1 << 20) + 1))
        let result = await offPool { ConfigLoader.load(path: file) }
        #expect(
            result.diagnostics.map(\.description) == [
                "\(file):1:1: error: the file is 1048577 bytes; a configuration file may have at most 1048576 bytes"
            ])
    }

    @Test func aFileAtTheSizeLimitIsParsed() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let head = "version: 1\nvms: {}\n#"
        let text = head + String(repeating: "x", count: (1 << 20) - head.utf8.count)
        let file = try directory.write("full.yaml", text)
        let result = await offPool { ConfigLoader.load(path: file) }
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.desired == DesiredState())
    }

    @Test func aMissingPathIsAnInvalidConfiguration() {
        let result = ConfigLoader.load(path: "/nonexistent/macvtapd-\(UUID().uuidString)")
        #expect(result.desired == nil)
        #expect(result.diagnostics.count == 1)
        #expect(result.diagnostics.first?.message.contains("No such file or directory") == true)
    }

    @Test func anEmptyDirectoryIsAnInvalidConfiguration() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let result = ConfigLoader.load(path: directory.path)
        #expect(result.desired == nil)
        #expect(result.diagnostics.first?.message.contains("holds no *.yaml or *.yml file") == true)
    }

    @Test func aBrokenSymlinkInADirectoryIsReportedNotSkipped() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("10-ok.yaml", "version: 1\nvms: {}\n")
        let link = directory.path + "/20-gone.yaml"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: directory.path + "/missing")
        let result = ConfigLoader.load(path: directory.path)
        #expect(result.desired == nil)
        #expect(
            result.diagnostics.map(\.description) == ["\(link): error: cannot read the file: No such file or directory"]
        )
    }

    @Test func aFIFOIsRefusedWithoutBlocking() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let fifo = directory.path + "/pipe.yaml"
        #expect(mkfifo(fifo, 0o600) == 0)
        let result = ConfigLoader.load(path: directory.path + "/")
        #expect(
            result.diagnostics.map(\.description) == [
                "\(fifo): error: a FIFO cannot be a configuration file; it must be a regular file"
            ])
        let direct = ConfigLoader.load(path: fifo)
        #expect(
            direct.diagnostics.map(\.description) == [
                "\(fifo): error: the configuration is a FIFO; it must be a regular file or a directory"
            ])
    }

    @Test func controlCharactersArePlacedOnTheirLine() {
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", text: "version: 1\nvms: {}\n# bell \u{07}\n")])
        #expect(
            result.diagnostics.map(\.description) == [
                "t.yaml:3:8: error: invalid YAML: control characters are not allowed"
            ])
    }
}
