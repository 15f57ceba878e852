import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The real systemd-udevd serving one sandbox's network namespace, and nothing else.
///
/// The kernel delivers a namespace's network device events to uevent sockets in that namespace,
/// so a udevd started there processes the sandbox's interfaces: it runs `rules`, renames with
/// `NAME=`, writes the database into `Sandbox.udevRunDirectory` and announces each device when it
/// is done, exactly as on a host. It runs in a mount namespace of its own with private `/run`,
/// `/dev` and rules directories: the host's rules never run, and events it also receives for the
/// host's other devices touch nothing outside.
public final class TestUdevd: Sendable {
    public let process: BackgroundProcess

    private init(process: BackgroundProcess) {
        self.process = process
    }

    public static let executable = "/lib/systemd/systemd-udevd"

    /// Starts udevd with only `rules` (udev rules syntax), waits until its control socket is up and
    /// has it process the interfaces that already exist.
    public static func start(in sandbox: Sandbox, rules: String) async throws -> TestUdevd {
        try FileManager.default.createDirectory(atPath: sandbox.udevRunDirectory, withIntermediateDirectories: true)
        let rulesFile = try sandbox.directory.write("test.rules", rules)
        let script = [
            "mount --make-rprivate /",
            "mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir /run/udev", "mount --bind \"$0\" /run/udev",
            "mount -t tmpfs -o mode=0755 tmpfs /dev", "mknod -m 666 /dev/null c 1 3",
            "mount -t tmpfs tmpfs /usr/lib/udev/rules.d", "mount -t tmpfs tmpfs /etc/udev/rules.d",
            "cp \"$1\" /etc/udev/rules.d/50-test.rules",
            "exec \(executable) --resolve-names=never --children-max=2",
        ].joined(separator: " && ")
        let process = try await BackgroundProcess.launch(
            "/usr/sbin/ip",
            ["netns", "exec", sandbox.namespace.name, "/bin/sh", "-c", script, sandbox.udevRunDirectory, rulesFile],
            logPath: sandbox.directory.path + "/udevd.log")
        let udevd = TestUdevd(process: process)
        let control = sandbox.udevRunDirectory + "/control"
        let deadline = ContinuousClock.now + .seconds(5)
        while access(control, F_OK) != 0 {
            guard ContinuousClock.now < deadline, kill(process.pid, 0) == 0 else {
                await udevd.stop()
                throw UdevViewError("systemd-udevd did not start: \(process.log())", 0)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        // What systemd-udev-trigger does at boot: replay "add" for the interfaces that existed
        // before udevd (lo, at least), so that every one of them ends up initialised.
        do {
            try await sandbox.namespace.exec(["udevadm", "trigger", "--subsystem-match=net", "--action=add"])
            let loopback = sandbox.udevRunDirectory + "/data/n1"
            while access(loopback, F_OK) != 0 {
                guard ContinuousClock.now < deadline else { throw UdevViewError("udevd did not process lo", 0) }
                try await Task.sleep(for: .milliseconds(10))
            }
        } catch {
            await udevd.stop()
            throw error
        }
        return udevd
    }

    public func stop() async {
        await process.stop()
    }
}
