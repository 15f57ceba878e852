import Glibc
import MacvtapdConfig

/// posix_spawn for the guest fixture: children get /dev/null as stdin and none of the test
/// process's other descriptors (a probe socket leaked into QEMU would outlive the test's close).
enum GuestProcess {
    /// Starts `arguments[0]` (searched in PATH) with stdout and stderr appended to `outputPath`.
    static func spawn(_ arguments: [String], outputPath: String) throws(GuestVMError) -> pid_t {
        let output = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw .system(operation: "open \(outputPath)", errno: errno) }
        defer { close(output) }
        return try spawn(arguments, output: output)
    }

    /// Runs a command to completion and returns its exit code (128+signal when killed) and output.
    /// The output goes through a file, not a pipe: a child spawned meanwhile by another thread
    /// could inherit a pipe's write end and keep it open for as long as that child lives.
    static func run(_ arguments: [String]) throws(GuestVMError) -> (status: Int32, output: String) {
        var template = Array("/tmp/macvtapd-guest-run-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw .system(operation: "mkstemp /tmp/macvtapd-guest-run-XXXXXX", errno: errno) }
        close(fd)
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { unlink(path) }
        let pid = try spawn(arguments, outputPath: path)
        let status = reap(pid, blocking: true) ?? -1
        return (exitCode(status), readFile(path))
    }

    /// The whole content of a (small) file, or a note saying it could not be read.
    static func readFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "(cannot open \(path): \(String(cString: strerror(errno))))" }
        defer { close(fd) }
        var content: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            content.append(contentsOf: buffer[..<count])
        }
        return String(decoding: content, as: UTF8.self)
    }

    /// waitpid; nil while a non-blocking wait finds the child still running.
    static func reap(_ pid: pid_t, blocking: Bool) -> Int32? {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
            if result == pid { return status }
            if result == 0 { return nil }
            if errno != EINTR { return nil }
        }
    }

    /// The shell's convention: the exit code, or 128 + the signal that killed the process.
    static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    private static func spawn(_ arguments: [String], output: Int32) throws(GuestVMError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, output, 2)
        // closefrom is not visible to Swift; closing every descriptor open now is as good, since
        // glibc ignores EBADF from spawn close actions (a descriptor closed meanwhile).
        for fd in openDescriptors() where fd > 2 {
            posix_spawn_file_actions_addclose(&actions, fd)
        }

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let attributes = CleanSignalSpawnAttributes()
        let result = posix_spawnp(&pid, arguments[0], &actions, attributes.pointer, argv, environ)
        guard result == 0 else { throw .system(operation: "spawn \(arguments[0])", errno: result) }
        return pid
    }

    private static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        var descriptors: [Int32] = []
        while let entry = readdir(directory) {
            let name = direntName(entry)
            if let fd = Int32(name) { descriptors.append(fd) }
        }
        return descriptors
    }
}
