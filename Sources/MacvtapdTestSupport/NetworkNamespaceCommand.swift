import Glibc

/// A command run by the namespace fixtures (`ip ...`) that exited non-zero or could not start.
public struct NetworkNamespaceCommandError: Error, CustomStringConvertible {
    public var command: [String]
    public var status: Int32
    public var output: String

    public var description: String {
        "`\(command.joined(separator: " "))` failed with status \(status): \(output)"
    }
}

/// posix_spawn + wait, output (stdout and stderr together) captured: no Foundation, no shell.
public enum NetworkNamespaceCommand {
    /// Runs `arguments[0]` (looked up in PATH) and returns its output; throws when it fails.
    /// Waits on a thread of its own (`offPool`), never on the cooperative pool.
    @discardableResult
    public static func run(_ arguments: [String]) async throws -> String {
        try await offPool { try runBlocking(arguments) }
    }

    /// `run` waiting on the calling thread: only for benchmarks' timed loops and synchronous code
    /// that owns its thread.
    @discardableResult
    @available(*, noasync, message: "waits for the child on a cooperative pool thread: use run")
    public static func runBlocking(_ arguments: [String]) throws -> String {
        let (status, output) = try runReturningStatusBlocking(arguments)
        guard status == 0 else {
            throw NetworkNamespaceCommandError(command: arguments, status: status, output: output)
        }
        return output
    }

    public static func runReturningStatus(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await offPool { try runReturningStatusBlocking(arguments) }
    }

    static func runReturningStatusBlocking(_ arguments: [String]) throws -> (status: Int32, output: String) {
        var pipeFDs: [Int32] = [-1, -1]
        // A socketpair because it can be made close-on-exec atomically (pipe2 needs _GNU_SOURCE):
        // a write end leaked into a child spawned in parallel would hold our read open.
        let paired = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pipeFDs)
        guard paired == 0 else {
            throw NetworkNamespaceCommandError(command: arguments, status: -1, output: "socketpair: errno \(errno)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let attributes = CleanSignalSpawnAttributes()
        let spawned = posix_spawnp(&pid, arguments[0], &actions, attributes.pointer, argv, environ)
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        guard spawned == 0 else {
            throw NetworkNamespaceCommandError(command: arguments, status: -1, output: "posix_spawnp: errno \(spawned)")
        }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            output += chunk[0..<count]
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS are macros: exit code in bits 8-15 when the low 7 bits are 0.
        let exitCode = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return (exitCode, String(decoding: output, as: UTF8.self))
    }
}
