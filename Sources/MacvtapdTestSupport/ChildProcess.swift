import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A finished child process: its exit status, output and the resources it used.
public struct ChildResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    /// Wall-clock time from spawn to exit, as seen by the test (load on the machine counts).
    public var seconds: Double
    /// The child's own CPU time, user + system: what the work cost, whatever else runs.
    public var cpuSeconds: Double
    /// The child's own peak RSS (see `usageWrapper`).
    public var maxResidentKiB: Int
}

public enum ChildProcess {
    /// Runs `executable` with `arguments`, output to temporary files (no pipe to fill), and waits for it
    /// on a thread of its own: a blocking wait on one of the few cooperative threads would stall
    /// every other test running in parallel.
    public static func run(_ executable: String, _ arguments: [String]) async throws -> ChildResult {
        try await offPool { try runBlocking(executable, arguments) }
    }

    /// GNU time, a small C program, between the test runner and the child. `ru_maxrss` of a child
    /// the runner starts itself is useless: posix_spawn (vfork) shares the runner's memory until
    /// exec, and exec records that memory's high-water mark as the child's, so a runner that
    /// peaked at 300 MB reports 300 MB for `/bin/true` (and what a test reads depends on what ran
    /// before it). GNU time forks the child from its own ~1 MB image and reads the child's peak
    /// with wait4; the runner only reads the number back.
    static let usageWrapper = "/usr/bin/time"

    static func runBlocking(_ executable: String, _ arguments: [String]) throws -> ChildResult {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let outPath = directory.path + "/stdout"
        let errPath = directory.path + "/stderr"
        let usagePath = directory.path + "/usage"
        guard access(usageWrapper, X_OK) == 0 else {
            throw ChildError("\(usageWrapper) is missing: scripts/install-deps.sh installs Debian's 'time'")
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

        let wrapped = [usageWrapper, "--format=%M %U %S", "--output=" + usagePath, "--", executable] + arguments
        let argv = wrapped.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let start = DispatchTime.now()
        let attributes = CleanSignalSpawnAttributes()
        let spawned = posix_spawn(&pid, usageWrapper, &actions, attributes.pointer, argv, environ)
        guard spawned == 0 else {
            throw ChildError("cannot start \(executable): \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw ChildError("wait4 for \(executable) failed: errno \(errno)") }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let exited = status & 0x7F == 0
        guard exited else { throw ChildError("\(executable) was killed by signal \(status & 0x7F)") }
        // GNU time writes "Command exited with non-zero status N" or "Command terminated by signal
        // N" before the figures; the figures are the last line.
        let usage = (try? String(contentsOfFile: usagePath, encoding: .utf8)) ?? ""
        let lines = usage.split(separator: "\n")
        if let first = lines.first, first.hasPrefix("Command terminated by signal") {
            throw ChildError("\(executable) was killed: \(first)")
        }
        let figures = lines.last?.split(separator: " ") ?? []
        guard figures.count == 3, let peak = Int(figures[0]), let user = Double(figures[1]),
            let system = Double(figures[2])
        else { throw ChildError("\(usageWrapper) did not report \(executable)'s usage: \(usage)") }
        return ChildResult(
            status: (status >> 8) & 0xFF,
            stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "",
            seconds: seconds, cpuSeconds: user + system, maxResidentKiB: peak)
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
