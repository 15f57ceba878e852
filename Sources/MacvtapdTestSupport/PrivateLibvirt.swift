import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A libvirtd of the test's own, never the machine's: session mode (`qemu:///session`) as a
/// dedicated system user, with its home, runtime, config and cache directories in a temporary
/// directory the test removes. The machine's /etc/libvirt, its system daemon and its sockets are
/// never read or touched; QEMU runs as that user, which macvtapd (root) reaches over the monitor
/// socket the domain's `<qemu:commandline>` creates and hands the tap fds through.
public final class PrivateLibvirt: Sendable {
    public static let user = "mvtlibvirt"
    public let home: TemporaryDirectory
    private let daemon: BackgroundProcess

    /// Runs `body` with a private libvirtd and always stops it (destroying its domains) afterwards.
    public static func with<Result>(_ body: (PrivateLibvirt) async throws -> Result) async throws -> Result {
        try await withCleanup(try await start(), cleanup: { await $0.stop() }, body)
    }

    public static func start() async throws -> PrivateLibvirt {
        try await ensureUser()
        // libvirt puts each domain's monitor socket five directories below the config home.
        let home = try TemporaryDirectory(shortPrefix: "mvtlv")
        do {
            // The user's home: its XDG directories and what its QEMUs read (kernel, console file).
            for directory in ["", "/run", "/config", "/config/libvirt", "/cache", "/data"] {
                mkdir(home.path + directory, 0o700)
            }
            // QEMU's own output to a file libvirt opens, not through virtlogd: a virtlogd the session
            // spawned would outlive the test by its two-minute idle timeout.
            _ = try home.write("config/libvirt/qemu.conf", "stdio_handler = \"file\"\n")
            let chown = try await ChildProcess.run("/bin/chown", ["-R", "\(user):\(user)", home.path])
            guard chown.status == 0 else { throw ChildError("chown \(home.path): \(chown.stderr)") }
            chmod(home.path, 0o755)
            let daemon = try await BackgroundProcess.launch(
                "/usr/bin/setpriv", asUser(home.path) + ["/usr/sbin/libvirtd"], logPath: home.path + ".libvirtd.log")
            let libvirt = PrivateLibvirt(home: home, daemon: daemon)
            let ready = try await eventually(within: .seconds(20)) { try await libvirt.virsh(["version"]).status == 0 }
            guard ready else {
                await libvirt.stop()
                throw ChildError("the private libvirtd did not answer: \(daemon.log().suffix(2000))")
            }
            return libvirt
        } catch {
            home.remove()
            throw error
        }
    }

    private init(home: TemporaryDirectory, daemon: BackgroundProcess) {
        self.home = home
        self.daemon = daemon
    }

    /// `setpriv` arguments that run a command as the user with only its own environment: libvirt's
    /// session mode finds every directory from HOME and the XDG variables. LIBVIRT_AUTOSTART=0: a
    /// virsh that finds no daemon (the first `version` while ours starts) must not spawn one of its
    /// own (`libvirtd --timeout=120`), which could win the pidfile and outlive the test.
    private static func asUser(_ home: String) -> [String] {
        [
            "--reuid", user, "--regid", user, "--init-groups", "/usr/bin/env", "-i", "HOME=\(home)",
            "XDG_RUNTIME_DIR=\(home)/run", "XDG_CONFIG_HOME=\(home)/config", "XDG_CACHE_HOME=\(home)/cache",
            "XDG_DATA_HOME=\(home)/data", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "LIBVIRT_AUTOSTART=0",
        ]
    }

    /// A system user without a login, made once per machine.
    private static func ensureUser() async throws {
        if getpwnam(user) != nil { return }
        let made = try await ChildProcess.run(
            "/usr/sbin/useradd",
            ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user])
        // Another test process may have made it in between.
        guard made.status == 0 || getpwnam(user) != nil else { throw ChildError("useradd \(user): \(made.stderr)") }
    }

    /// `virsh -c qemu:///session ARGS` as the user.
    public func virsh(_ arguments: [String]) async throws -> ChildResult {
        try await ChildProcess.run(
            "/usr/bin/setpriv", Self.asUser(home.path) + ["/usr/bin/virsh", "-c", "qemu:///session"] + arguments)
    }

    /// `virsh -c qemu:///session ARGS` as the user, left running (e.g. `event --loop`), its output
    /// in `logPath`.
    public func startVirsh(_ arguments: [String], logPath: String) throws -> BackgroundProcess {
        try BackgroundProcess.start(
            "/usr/bin/setpriv", Self.asUser(home.path) + ["/usr/bin/virsh", "-c", "qemu:///session"] + arguments,
            logPath: logPath)
    }

    /// Writes a file the user's QEMU can read.
    public func place(_ name: String, bytes: [UInt8]) throws -> String {
        let path = try home.write(name, bytes: bytes)
        guard let entry = getpwnam(Self.user), Glibc.chown(path, entry.pointee.pw_uid, entry.pointee.pw_gid) == 0 else {
            throw ChildError("chown \(path): \(String(cString: strerror(errno)))")
        }
        return path
    }

    /// Destroys and undefines every domain, stops the daemon, removes the directory.
    public func stop() async {
        if let list = try? await virsh(["list", "--all", "--name"]) {
            for name in list.stdout.split(separator: "\n") where !name.isEmpty {
                _ = try? await virsh(["destroy", String(name)])
                _ = try? await virsh(["undefine", String(name)])
            }
        }
        await daemon.stop()
        unlink(home.path + ".libvirtd.log")
        home.remove()
    }
}
