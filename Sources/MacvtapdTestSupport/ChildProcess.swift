import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A finished child process: its exit status, output and the resources it used, measured by wait4.
public struct ChildResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var seconds: Double
    public var maxResidentKiB: Int
}

public enum ChildProcess {
    /// Runs `executable` with `arguments`, output to temporary files (no pipe to fill), and waits for it
    /// on a thread of its own: a blocking wait on one of the few cooperative threads would stall
    /// every other test running in parallel.
    public static func run(_ executable: String, _ arguments: [String]) async throws -> ChildResult {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try runBlocking(executable, arguments) })
            }
        }
    }

    static func runBlocking(_ executable: String, _ arguments: [String]) throws -> ChildResult {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let outPath = directory.path + "/stdout"
        let errPath = directory.path + "/stderr"

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let start = DispatchTime.now()
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard spawned == 0 else {
            throw ChildError("cannot start \(executable): \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 {
            guard errno == EINTR else { throw ChildError("wait4 for \(executable) failed: errno \(errno)") }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let exited = status & 0x7F == 0
        guard exited else { throw ChildError("\(executable) was killed by signal \(status & 0x7F)") }
        return ChildResult(
            status: (status >> 8) & 0xFF,
            stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "",
            seconds: seconds, maxResidentKiB: usage.ru_maxrss)
    }

    /// The `macvtapd` binary SwiftPM built next to this test bundle.
    public static func macvtapdBinary() throws -> String {
        let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let binary = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("macvtapd").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw ChildError("no macvtapd binary at \(binary); build it with `swift build` before the tests")
        }
        return binary
    }
}

public struct ChildError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
