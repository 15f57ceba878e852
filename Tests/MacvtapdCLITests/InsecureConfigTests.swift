import Foundation
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// sshd's StrictModes for the desired state: apply and run refuse a configuration that a group,
/// other users or another owner can change, naming the path and its mode; validate and plan warn.
@Suite("insecure configuration")
struct InsecureConfigTests {
    /// A conf.d directory with one file, both with the given modes, under a fresh 0755 directory in
    /// the sticky /tmp.
    static func confDirectory(directoryMode: mode_t = 0o755, fileMode: mode_t = 0o644) throws -> (
        TemporaryDirectory, conf: String, file: String
    ) {
        let base = try TemporaryDirectory()
        chmod(base.path, 0o755)
        let conf = base.path + "/conf.d"
        mkdir(conf, 0o755)
        let file = try base.write("conf.d/10-none.yaml", "version: 1\nvms: {}\n")
        chmod(file, fileMode)
        chmod(conf, directoryMode)
        return (base, conf, file)
    }

    @Test func applyRefusesAGroupWritableFileNamingItsPathAndMode() async throws {
        let (base, conf, file) = try Self.confDirectory(fileMode: 0o664)
        defer { base.remove() }
        let apply = try await macvtapd(["apply", "-c", conf, "--status-file", base.path + "/status.json"])
        #expect(apply.status == 1)
        #expect(apply.stderr.contains("\(file): error: writable by group (mode 0664, owner uid 0)"), "\(apply.stderr)")
        #expect(apply.stderr.contains("\(conf): refusing a configuration that others can change"))
        #expect(apply.stdout.isEmpty, "nothing was planned or applied")
        #expect(access(base.path + "/status.json", F_OK) != 0, "no status written")
    }

    @Test func runRefusesAnOtherWritableDirectoryAtOnce() async throws {
        let (base, conf, _) = try Self.confDirectory(directoryMode: 0o777)
        defer { base.remove() }
        let run = try await macvtapd(["run", "-c", conf, "--status-file", base.path + "/status.json"])
        #expect(run.status == 1)
        #expect(run.stderr.contains("\(conf): error: writable by group and others (mode 0777, owner uid 0)"))
        #expect(run.seconds < 10)
    }

    /// Whoever can write a directory above the configuration can rename it away and put their own.
    @Test func aWritableParentDirectoryIsRefusedAndAStickyOneIsNot() async throws {
        let (base, conf, _) = try Self.confDirectory()
        defer { base.remove() }
        let statusFile = base.path + "/status.json"
        let fine = try await macvtapd(["apply", "-c", conf, "--status-file", statusFile, "--udev", "off"])
        #expect(fine.status == 0, "a 0755 directory inside the sticky /tmp is safe: \(fine.stderr)")
        #expect(fine.stderr.isEmpty)

        chmod(base.path, 0o775)
        let refused = try await macvtapd(["apply", "-c", conf, "--status-file", statusFile])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("\(base.path): error: writable by group (mode 0775, owner uid 0)"))

        chmod(base.path, 0o1777)
        let sticky = try await macvtapd(["apply", "-c", conf, "--status-file", statusFile, "--udev", "off"])
        #expect(sticky.status == 0, "\(sticky.stderr)")
    }

    @Test func aFileOwnedByAnotherUserIsRefused() async throws {
        let (base, conf, file) = try Self.confDirectory()
        defer { base.remove() }
        #expect(chown(file, 65534, 65534) == 0)
        let apply = try await macvtapd(["apply", "-c", conf, "--status-file", base.path + "/status.json"])
        #expect(apply.status == 1)
        #expect(apply.stderr.contains("\(file): error: owned by uid 65534, neither root nor the user running macvtapd"))
    }

    @Test func allowInsecureConfigAppliesWithAWarning() async throws {
        let (base, conf, file) = try Self.confDirectory(fileMode: 0o666)
        defer { base.remove() }
        let apply = try await macvtapd([
            "apply", "-c", conf, "--status-file", base.path + "/status.json", "--udev", "off",
            "--allow-insecure-config",
        ])
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(apply.stderr.contains("\(file): warning: writable by group and others (mode 0666, owner uid 0)"))
        #expect(apply.stderr.contains("used anyway (--allow-insecure-config)"))
        #expect(apply.stdout.contains("Apply complete"))
    }

    /// CI checks configurations on checkouts that a umask made group-writable.
    @Test func validateAndPlanOnlyWarn() async throws {
        let (base, conf, file) = try Self.confDirectory(fileMode: 0o664)
        defer { base.remove() }
        let validate = try await macvtapd(["validate", "-c", conf])
        #expect(validate.status == 0)
        #expect(validate.stdout.contains("valid, 0 VM(s)"))
        #expect(validate.stderr.contains("\(file): warning: writable by group (mode 0664, owner uid 0)"))
        #expect(validate.stderr.contains("macvtapd run and apply refuse such a configuration"))
        let plan = try await macvtapd([
            "plan", "-c", conf, "--status-file", base.path + "/status.json", "--udev", "off", "--detailed-exitcode",
        ])
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stderr.contains("\(file): warning: writable by group"))
    }

    @Test func onlyApplyAndRunOfferTheOverride() async throws {
        for command in ["apply", "run"] {
            #expect(try await macvtapd([command, "--help"]).stdout.contains("--allow-insecure-config"))
        }
        for command in ["validate", "plan", "status"] {
            #expect(!(try await macvtapd([command, "--help"]).stdout.contains("--allow-insecure-config")))
        }
    }
}
