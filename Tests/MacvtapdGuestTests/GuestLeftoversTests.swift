import Foundation
import Glibc
import MacvtapdTestSupport
import Testing

@Suite("Leftover guest VMs of dead test processes")
struct GuestLeftoversTests {
    @Test func stopsTheQEMUOfADeadOwnerAndRemovesItsDirectory() async throws {
        // Spawning, waiting and polling /proc block: off the two cooperative threads throughout.
        let directory = try await offPool { try Self.leftoverDirectoryName() }
        // Stands in for QEMU: a process whose command line names the VM directory.
        let orphan = try await offPool { try Self.spawn(["/bin/sleep", "30"], argv0: directory + "/qemu") }
        defer {
            kill(orphan, SIGKILL)
            Self.reapInBackground(orphan)
        }
        try await offPool { try Self.createLeftover(directory, qemu: orphan) }
        defer { Self.remove(directory) }

        // Another test's first launch in this process may reap it first; the outcome is the same.
        // A scan of /tmp and /proc: off the two cooperative threads every other test shares.
        await offPool { GuestLeftovers.reap() }

        #expect(await offPool { Self.wait(orphan) } & 0x7f == SIGKILL)
        #expect(access(directory, F_OK) != 0)
    }

    @Test func leavesAProcessWhoseCommandLineDoesNotNameTheDirectory() async throws {
        let directory = try await offPool { try Self.leftoverDirectoryName() }
        // A recycled pid: the pid file names a process that is not that VM's QEMU.
        let stranger = try await offPool { try Self.spawn(["/bin/sleep", "30"]) }
        defer {
            kill(stranger, SIGKILL)
            Self.reapInBackground(stranger)
        }
        try await offPool { try Self.createLeftover(directory, qemu: stranger) }
        defer { Self.remove(directory) }

        // A scan of /tmp and /proc: off the two cooperative threads every other test shares.
        await offPool { GuestLeftovers.reap() }

        var status: Int32 = 0
        #expect(waitpid(stranger, &status, WNOHANG) == 0, "the stranger must still run")
        #expect(access(directory, F_OK) != 0)
    }

    /// A VM directory name whose owner process is dead (it ran /bin/true and was reaped).
    static func leftoverDirectoryName() throws -> String {
        let deadOwner = try spawn(["/bin/true"])
        _ = wait(deadOwner)
        let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        return "/tmp/\(GuestLeftovers.directoryPrefix)\(deadOwner)-test\(suffix)"
    }

    /// Populates the directory under another name and renames it into place, so that a reap
    /// running concurrently (any launch in this process) never sees it half made.
    static func createLeftover(_ directory: String, qemu: pid_t) throws {
        // posix_spawn returns while the child's exec is still filling in its argument area, and
        // /proc/<pid>/cmdline reads empty until then; real QEMUs write their pid file much later.
        let deadline = ContinuousClock.now + .seconds(5)
        while commandLine(of: qemu).isEmpty && ContinuousClock.now < deadline { usleep(1000) }
        let staging = "/tmp/macvtapd-guest-staging-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        guard mkdir(staging, 0o700) == 0 else { throw GuestTestFailure("mkdir \(staging)") }
        try write("\(qemu)\n", to: staging + "/qemu.pid")
        guard rename(staging, directory) == 0 else { throw GuestTestFailure("rename \(staging) \(directory)") }
    }

    static func commandLine(of pid: pid_t) -> [UInt8] {
        let fd = open("/proc/\(pid)/cmdline", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return count > 0 ? Array(buffer[..<count]) : []
    }

    static func remove(_ directory: String) {
        unlink(directory + "/qemu.pid")
        rmdir(directory)
    }

    static func spawn(_ arguments: [String], argv0: String? = nil) throws -> pid_t {
        let argv = ([argv0 ?? arguments[0]] + arguments.dropFirst()).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], nil, nil, argv, nil)
        guard result == 0 else { throw GuestTestFailure("spawn \(arguments[0]): \(String(cString: strerror(result)))") }
        return pid
    }

    /// For a `defer`: the waitpid after a kill happens on a thread of its own.
    static func reapInBackground(_ pid: pid_t) {
        Thread.detachNewThread { _ = wait(pid) }
    }

    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    static func write(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GuestTestFailure("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw GuestTestFailure("write \(path)") }
    }
}
