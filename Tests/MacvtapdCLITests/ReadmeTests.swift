import Foundation
import MacvtapdTestSupport
import Testing

/// README.md says what the binary does: every macvtapd flag it mentions exists, and its JSON plan
/// sample is printed the way `plan --json` prints (sorted keys, the encoder's layout).
@Suite("README")
struct ReadmeTests {
    static let readme = (try? String(contentsOfFile: repositoryRoot + "/README.md", encoding: .utf8)) ?? ""

    /// Flags of other tools that README.md quotes, each with the tool.
    static let otherTools: [String: String] = [
        "--static-swift-stdlib": "swift build", "--filter": "swift test", "--offline": "systemd-analyze",
        // swift-argument-parser's own, hidden from --help; the PackageTests run it through make.
        "--generate-completion-script": "macvtapd (hidden)",
        // The benchmark command lines the README quotes with its numbers.
        "--idle-seconds": "macvtapd-bench scale", "--baseline-idle-seconds": "macvtapd-bench scale",
        "--flaps": "macvtapd-bench scale", "--repeats": "macvtapd-bench scale", "--macvtapd": "macvtapd-bench scale",
        // What the libvirt section says the tests do.
        "--paused": "virsh start", "--system": "useradd", "--starts": "macvtapd-bench libvirt",
        "--baseline-flaps": "macvtapd-bench reconnect", "--cycles": "macvtapd-bench netlink",
    ]

    @Test func everyFlagInTheReadmeExists() async throws {
        #expect(!Self.readme.isEmpty)
        var offered: Set<String> = []
        for command in [
            [], ["validate"], ["plan"], ["apply"], ["run"], ["status"], ["print", "qemu-args"],
            ["print", "libvirt-xml"],
        ] {
            let help = try await macvtapd(command + ["--help"])
            offered.formUnion(PackageTests.flags(in: help.stdout))
        }
        let mentioned = PackageTests.flags(in: Self.readme)
        #expect(mentioned.count > 10)
        for flag in mentioned.sorted() where Self.otherTools[flag] == nil {
            #expect(offered.contains(flag), "README.md mentions \(flag), which no macvtapd --help offers")
        }
    }

    @Test func theUsageBlockNamesEveryFlagOfEveryCommand() async throws {
        let start = try #require(Self.readme.range(of: "## Usage\n\n```\n"))
        let end = try #require(Self.readme[start.upperBound...].range(of: "```"))
        let usage = String(Self.readme[start.upperBound..<end.lowerBound])
        for command in ["validate", "plan", "apply", "run", "status"] {
            #expect(usage.contains("macvtapd \(command) [-c PATH]"))
            let help = try await macvtapd([command, "--help"])
            // -c stands for --config in the block, as in every USAGE line.
            for flag in PackageTests.flags(in: help.stdout) where !["--help", "--version", "--config"].contains(flag) {
                #expect(usage.contains(flag), "the Usage block lacks \(command) \(flag)")
            }
        }
    }

    @Test func theJSONPlanSampleIsInThePrintedLayout() throws {
        let start = try #require(Self.readme.range(of: "```json\n"))
        let end = try #require(Self.readme[start.upperBound...].range(of: "\n```"))
        let sample = String(Self.readme[start.upperBound..<end.lowerBound])
        let parsed = try JSONSerialization.jsonObject(with: Data(sample.utf8))
        let printed = try JSONSerialization.data(
            withJSONObject: parsed, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        #expect(String(decoding: printed, as: UTF8.self) == sample)
        let document = try #require(parsed as? [String: Any])
        #expect(Set(document.keys) == ["format_version", "changes", "summary", "bindings"])
        let summary = try #require(document["summary"] as? [String: Int])
        #expect(Set(summary.keys) == ["create", "update", "replace", "destroy", "unchanged", "waiting", "unknown"])
    }

    /// The plan symbols README.md lists are the ones `plan --help` and the renderer use.
    @Test func planSymbolsAgreeWithHelp() async throws {
        let help = flat(try await macvtapd(["plan", "--help"]).stdout)
        #expect(help.contains("+ create, ~ update in place, -/+ replace, - destroy"))
        #expect(Self.readme.contains("Symbols: `+` create, `~` update in place, `-/+` replace, `-` destroy."))
    }
}
