import Foundation
import MacvtapdTestSupport
import Testing

/// `make install`, `make deb` and what they install, as an operator gets it: the package installs
/// into a throwaway root (scripts/test-deb.sh), runs from the installed path, enables its unit
/// without starting it and purges without a trace; the man pages and completions come from the
/// binary itself; the unit verifies and the README states its exposure score.
///
/// The release build behind the package takes minutes on 2 cores: `make test` makes the package
/// before the suite, and this suite's one `make deb` (for all its tests) remakes it only when the
/// binary or a packaged file changed.
@Suite("package", .serialized)
struct PackageTests {
    static let scratch = repositoryRoot + "/.build-release"
    static let debroot = scratch + "/debroot"
    static let version =
        (try? String(contentsOfFile: repositoryRoot + "/VERSION", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"

    /// `make deb`, once per test process: the package's path and make's output.
    static let built = Task { () throws -> (deb: String, output: String) in
        let out = scratch + "/deb"
        let make = try await ChildProcess.run("/usr/bin/make", ["-C", repositoryRoot, "deb", "DEB_OUT=" + out])
        guard make.status == 0 else {
            throw ChildError(
                "make deb failed (\(make.status)):\n\(make.stdout.suffix(3000))\n\(make.stderr.suffix(3000))")
        }
        let arch = try await ChildProcess.run("/usr/bin/dpkg", ["--print-architecture"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return (out + "/macvtapd_\(version)_\(arch).deb", make.stdout)
    }

    /// The findings scripts/test-deb.sh prints, `name: value` per line.
    static func findings(_ output: String) -> [String: String] {
        var found: [String: String] = [:]
        for line in output.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon])
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            found[key] = found[key].map { $0 + "\n" + value } ?? value
        }
        return found
    }

    @Test func packageInstallsRunsAndPurgesCleanlyInAThrowawayRoot() async throws {
        let (deb, _) = try await Self.built.value
        let size = try FileManager.default.attributesOfItem(atPath: deb)[.size] as? Int ?? 0
        #expect(size > 1_000_000 && size < 40_000_000, "package size \(size) bytes")

        let run = try await ChildProcess.run(
            repositoryRoot + "/scripts/test-deb.sh", [deb, repositoryRoot + "/examples/ansible/playbook.yml"])
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")
        let found = Self.findings(run.stdout)

        let depends = try #require(found["depends"])
        #expect(depends.contains("libudev1") && depends.contains("libyaml-0-2"), "\(depends)")
        #expect(!depends.lowercased().contains("swift"), "\(depends)")
        #expect(found["installed"] == "macvtapd \(Self.version) ii")
        #expect(found["version"]?.hasPrefix(Self.version + " (") == true, "\(found["version"] ?? "")")
        let ldd = try #require(found["ldd"])
        #expect(ldd.contains("libudev.so.1") && ldd.contains("libyaml-0.so.2"), "\(ldd)")
        #expect(!ldd.lowercased().contains("swift") && !ldd.contains("libFoundation") && !ldd.contains("libdispatch"))
        // libstdc++ is linked in from its archive (Makefile STATIC_CXX_DIR): 1 MiB less RSS.
        #expect(!ldd.contains("libstdc++") && !depends.contains("libstdc++"), "\(ldd)\n\(depends)")
        #expect(found["validate"] == "/etc/macvtapd: valid, 0 VM(s), 0 binding(s)")
        #expect(found["plan"]?.contains("No changes") == true, "the example configuration changes nothing")
        #expect(found["conffiles"] == "/etc/macvtapd/macvtapd.yaml")
        #expect(found["config mode"] == "755 root 644 root")
        #expect(found["enabled"]?.hasSuffix("systemd/system/macvtapd.service") == true)
        #expect(found["verify"] == "clean")
        let manPages = Set(found["man"]?.split(separator: " ").map(String.init) ?? [])
        for page in [
            "macvtapd", "macvtapd.validate", "macvtapd.plan", "macvtapd.apply", "macvtapd.run", "macvtapd.status",
        ] {
            #expect(manPages.contains(page + ".8.gz"), "the package has no \(page).8.gz: \(manPages)")
        }
        #expect(found["ansible"]?.contains("failed=0") == true, "\(run.stdout)")
        #expect(found["purged"] == "nothing left")
    }

    /// The README's exposure score is the one `systemd-analyze security` gives the installed unit.
    @Test func readmeStatesTheUnitsExposureScore() async throws {
        _ = try await Self.built.value
        let unit = Self.debroot + "/usr/lib/systemd/system/macvtapd.service"
        let security = try await ChildProcess.run(
            "/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", unit])
        let line = try #require(
            security.stdout.split(separator: "\n").first { $0.contains("Overall exposure level") },
            "\(security.stdout)\(security.stderr)")
        let score = try #require(line.split(separator: " ").first { Double($0) != nil }.map(String.init))
        let readme = try String(contentsOfFile: repositoryRoot + "/README.md", encoding: .utf8)
        #expect(readme.contains("exposure level \(score) "), "systemd-analyze says: \(line)")
        #expect(Double(score)! <= 2.5, "\(line)")
    }

    /// generate-manual writes one page per command from the parser's own definitions: each
    /// subcommand has a page, the main page names every subcommand, every flag of `--help` is in its
    /// page, and groff renders them without a warning. (The package installs them compressed.)
    @Test func manPagesNameEverySubcommandAndFlag() async throws {
        _ = try await Self.built.value
        let directory = Self.scratch + "/generated/man"
        let main = try String(contentsOfFile: directory + "/macvtapd.8", encoding: .utf8)
        for command in ["validate", "plan", "apply", "run", "status"] {
            let page = try String(contentsOfFile: directory + "/macvtapd.\(command).8", encoding: .utf8)
            #expect(main.contains(command), "macvtapd.8 does not name \(command)")
            let help = try await macvtapd([command, "--help"])
            for flag in Self.flags(in: help.stdout) {
                // mdoc writes "--config" as "Fl -config" (Fl adds the first dash).
                #expect(page.contains("Fl " + flag.dropFirst()), "macvtapd.\(command).8 lacks \(flag)")
            }
        }
        let pages = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".8") }
        for page in pages {
            let render = try await ChildProcess.run(
                "/usr/bin/groff", ["-mandoc", "-Tutf8", "-ww", "-z", directory + "/" + page])
            #expect(render.status == 0 && render.stderr.isEmpty, "\(page): \(render.stderr)")
        }
    }

    @Test func completionsOfferEverySubcommandForEachShell() async throws {
        _ = try await Self.built.value
        for path in [
            "/usr/share/bash-completion/completions/macvtapd", "/usr/share/zsh/vendor-completions/_macvtapd",
            "/usr/share/fish/vendor_completions.d/macvtapd.fish",
        ] {
            let script = try String(contentsOfFile: Self.debroot + path, encoding: .utf8)
            for word in ["validate", "plan", "apply", "run", "status", "allow-insecure-config", "detailed-exitcode"] {
                #expect(script.contains(word), "\(path) lacks \(word)")
            }
        }
        let bash = try await ChildProcess.run(
            "/bin/bash", ["-n", Self.debroot + "/usr/share/bash-completion/completions/macvtapd"])
        #expect(bash.status == 0, "\(bash.stderr)")
    }

    /// `make install` honours PREFIX and DESTDIR, and `make uninstall` takes back every file,
    /// including the example configuration while it is unedited.
    @Test func makeInstallAndUninstallUnderADestdir() async throws {
        _ = try await Self.built.value
        let destdir = try TemporaryDirectory()
        defer { destdir.remove() }
        let make = ["-C", repositoryRoot, "DESTDIR=" + destdir.path, "PREFIX=/opt/mvtd"]
        let install = try await ChildProcess.run("/usr/bin/make", make + ["install"])
        #expect(install.status == 0, "\(install.stderr)")
        let files = try Self.files(under: destdir.path)
        for expected in [
            "/opt/mvtd/sbin/macvtapd", "/opt/mvtd/lib/systemd/system/macvtapd.service",
            "/opt/mvtd/share/man/man8/macvtapd.8", "/opt/mvtd/share/man/man8/macvtapd.run.8",
            "/opt/mvtd/share/bash-completion/completions/macvtapd", "/opt/mvtd/share/zsh/site-functions/_macvtapd",
            "/opt/mvtd/share/fish/vendor_completions.d/macvtapd.fish",
            "/opt/mvtd/share/macvtapd/macvtapd.schema.json", "/etc/macvtapd/macvtapd.yaml",
        ] {
            #expect(files.contains(expected), "make install did not install \(expected)")
        }
        let unit = try String(
            contentsOfFile: destdir.path + "/opt/mvtd/lib/systemd/system/macvtapd.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/opt/mvtd/sbin/macvtapd run --config /etc/macvtapd\n"))
        #expect(!unit.contains("@SBINDIR@") && !unit.contains("@SYSCONFDIR@"), "a placeholder is left in the unit")
        let example = try String(contentsOfFile: destdir.path + "/etc/macvtapd/macvtapd.yaml", encoding: .utf8)
        #expect(example.contains("$schema=/opt/mvtd/share/macvtapd/macvtapd.schema.json"))

        // An edited configuration survives both a second install and the uninstall.
        let edited = destdir.path + "/etc/macvtapd/10-mine.yaml"
        try "version: 1\nvms: {}\n".write(toFile: edited, atomically: false, encoding: .utf8)
        try (example + "# edited\n").write(
            toFile: destdir.path + "/etc/macvtapd/macvtapd.yaml", atomically: false, encoding: .utf8)
        #expect(try await ChildProcess.run("/usr/bin/make", make + ["install"]).status == 0)
        #expect(
            try String(contentsOfFile: destdir.path + "/etc/macvtapd/macvtapd.yaml", encoding: .utf8).hasSuffix(
                "# edited\n"))
        let uninstall = try await ChildProcess.run("/usr/bin/make", make + ["uninstall"])
        #expect(uninstall.status == 0, "\(uninstall.stderr)")
        #expect(try Self.files(under: destdir.path) == ["/etc/macvtapd/10-mine.yaml", "/etc/macvtapd/macvtapd.yaml"])

        // Unedited, the example goes with the rest.
        try FileManager.default.removeItem(atPath: destdir.path + "/etc")
        #expect(try await ChildProcess.run("/usr/bin/make", make + ["install"]).status == 0)
        #expect(try await ChildProcess.run("/usr/bin/make", make + ["uninstall"]).status == 0)
        #expect(try Self.files(under: destdir.path) == [])
    }

    /// Every `--flag` of a help text.
    static func flags(in help: String) -> Set<String> {
        var flags: Set<String> = []
        var rest = Substring(help)
        while let range = rest.range(of: "--") {
            let name = rest[range.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" }
            if let first = name.first, first.isLetter { flags.insert("--" + name) }
            rest = rest[range.upperBound...]
        }
        return flags
    }

    /// Regular files and symlinks under `root`, as absolute paths inside it, sorted.
    static func files(under root: String) throws -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        var found: [String] = []
        while let relative = walker.nextObject() as? String {
            let attributes = try FileManager.default.attributesOfItem(atPath: root + "/" + relative)
            if attributes[.type] as? FileAttributeType != .typeDirectory { found.append("/" + relative) }
        }
        return found.sorted()
    }
}
