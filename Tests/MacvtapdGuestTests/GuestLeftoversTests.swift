import Glibc
import MacvtapdTestSupport
import Testing

@Suite("Leftover guest VMs of dead test processes")
struct GuestLeftoversTests {
    @Test func stopsTheQEMUOfADeadOwnerAndRemovesItsDirectory() throws {
        let deadOwner = try Self.spawn(["/bin/true"])
        _ = Self.wait(deadOwner)
        var template = Array("/tmp/\(GuestLeftovers.directoryPrefix)\(deadOwner)-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let directory = try #require(created.map { String(cString: $0) })
        defer {
            unlink(directory + "/qemu.pid")
            rmdir(directory)
        }
        // Stands in for QEMU: a process whose command line names the VM directory.
        let orphan = try Self.spawn(["/bin/sleep", "30"], argv0: directory + "/qemu")
        defer {
            kill(orphan, SIGKILL)
            _ = Self.wait(orphan)
        }
        try Self.write("\(orphan)\n", to: directory + "/qemu.pid")

        GuestLeftovers.reap()

        #expect(Self.wait(orphan) & 0x7f == SIGKILL)
        #expect(access(directory, F_OK) != 0)
    }

    @Test func leavesAProcessWhoseCommandLineDoesNotNameTheDirectory() throws {
        let deadOwner = try Self.spawn(["/bin/true"])
        _ = Self.wait(deadOwner)
        var template = Array("/tmp/\(GuestLeftovers.directoryPrefix)\(deadOwner)-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let directory = try #require(created.map { String(cString: $0) })
        defer {
            unlink(directory + "/qemu.pid")
            rmdir(directory)
        }
        // A recycled pid: the pid file names a process that is not that VM's QEMU.
        let stranger = try Self.spawn(["/bin/sleep", "30"])
        defer {
            kill(stranger, SIGKILL)
            _ = Self.wait(stranger)
        }
        try Self.write("\(stranger)\n", to: directory + "/qemu.pid")

        GuestLeftovers.reap()

        var status: Int32 = 0
        #expect(waitpid(stranger, &status, WNOHANG) == 0, "the stranger must still run")
        #expect(access(directory, F_OK) != 0)
    }

    static func spawn(_ arguments: [String], argv0: String? = nil) throws -> pid_t {
        let argv = ([argv0 ?? arguments[0]] + arguments.dropFirst()).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], nil, nil, argv, nil)
        guard result == 0 else { throw GuestTestFailure("spawn \(arguments[0]): \(String(cString: strerror(result)))") }
        return pid
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
