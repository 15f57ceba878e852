import MacvtapdTestSupport
import Testing

/// `--help` as ArgumentParser prints it at 80 columns: short USAGE lines, paragraphs that wrap only
/// where the next word does not fit, each subcommand offering only what it uses.
@Suite("help and usage")
struct HelpTests {
    static let commands = [
        [], ["validate"], ["plan"], ["apply"], ["run"], ["status"], ["print"], ["print", "qemu-args"],
        ["print", "libvirt-xml"],
    ]

    @Test(arguments: commands)
    func helpFitsEightyColumnsWithShortUsage(_ command: [String]) async throws {
        let help = try await macvtapd(command + ["--help"])
        #expect(help.status == 0)
        for line in help.stdout.split(separator: "\n") {
            #expect(line.count <= 80, "\(command): \(line)")
        }
        let usage = help.stdout.split(separator: "\n").filter { $0.hasPrefix("USAGE:") }
        #expect(usage.count == 1)
        #expect((usage.first?.count ?? 999) <= 80, "\(usage)")
    }

    /// A hard line break inside a paragraph shows as a line that wraps early: the next line's first
    /// word would have fitted on it.
    @Test(arguments: commands)
    func discussionParagraphsWrapOnlyWhereNeeded(_ command: [String]) async throws {
        let help = try await macvtapd(command + ["--help"])
        let lines = help.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let usage = lines.firstIndex(where: { $0.hasPrefix("USAGE:") }) else {
            Issue.record("no USAGE line")
            return
        }
        // OVERVIEW (which may wrap), then the discussion paragraphs, then USAGE.
        for index in 0..<max(0, usage - 1) {
            let line = lines[index]
            let next = lines[index + 1]
            guard !line.isEmpty, !next.isEmpty else { continue }
            let word = next.split(separator: " ").first.map(String.init) ?? ""
            // ArgumentParser keeps lines under 80 columns: a word that fitted would have been on this line.
            #expect(line.count + 1 + word.count >= 80, "\(command): early break after '\(line)'")
        }
    }

    @Test(arguments: commands)
    func noOptionListsItsValuesTwice(_ command: [String]) async throws {
        let help = try await macvtapd(command + ["--help"])
        let text = flat(help.stdout)
        for value in ["trace", "critical", "on, off"] {
            let count = text.components(separatedBy: value).count - 1
            #expect(count <= 1, "\(command): '\(value)' appears \(count) times")
        }
    }

    @Test func durationPlaceholdersSayDuration() async throws {
        let help = try await macvtapd(["run", "--help"])
        #expect(help.stdout.contains("--resync <duration>"))
        #expect(help.stdout.contains("--qmp-timeout <duration>"))
        #expect(flat(help.stdout).contains("(500ms, 30s, 2m, 1h)"))
    }

    @Test func planOffersOnlyWhatItUses() async throws {
        let help = try await macvtapd(["plan", "--help"])
        #expect(!help.stdout.contains("--device-dir"))
        #expect(!help.stdout.contains("--resync"))
        #expect(!help.stdout.contains("written and read"))
        #expect(flat(help.stdout).contains("plan only reads it"))
        let refused = try await macvtapd(["plan", "-c", "/nonexistent", "--device-dir", "/tmp"])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("Unknown option '--device-dir'"))
    }

    @Test func validateAndStatusOfferNoObservationFlags() async throws {
        for command in ["validate", "status"] {
            let help = try await macvtapd([command, "--help"])
            for flag in ["--device-dir", "--qmp-timeout", "--udev", "--resync"] {
                #expect(!help.stdout.contains(flag), "\(command) offers \(flag)")
            }
        }
    }

    @Test func planSymbolsMatchTheRenderer() async throws {
        let help = try await macvtapd(["plan", "--help"])
        #expect(flat(help.stdout).contains("+ create, ~ update in place, -/+ replace, - destroy"))
    }

    @Test func versionNamesTheVersionFileAndTheCommit() async throws {
        let run = try await macvtapd(["--version"])
        let version = try String(contentsOfFile: repositoryRoot + "/VERSION", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(run.status == 0)
        let output = run.stdout.trimmingCharacters(in: .newlines)
        #expect(output.hasPrefix(version + " ("))
        let commit = output.dropFirst(version.count + 2).dropLast()
        #expect(output.hasSuffix(")"))
        #expect(commit.count == 12 && commit.allSatisfy(\.isHexDigit) || commit == "unknown", "\(output)")
    }
}

/// Help text with its line breaks and indentation folded into single spaces, as a reader reads it.
func flat(_ text: String) -> String {
    text.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")
}
