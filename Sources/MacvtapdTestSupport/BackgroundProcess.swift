import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process left running (the daemon), with its output in a file.
public final class BackgroundProcess: Sendable {
    public let pid: pid_t
    public let logPath: String
    private let exitStatus = Mutex<Int32?>(nil)

    /// `start` with the spawn on a thread of its own: posix_spawn waits for the child's exec.
    public static func launch(
        _ executable: String, _ arguments: [String], logPath: String, environment: [String: String] = [:],
        stderr: Int32? = nil
    ) async throws -> BackgroundProcess {
        try await offPool {
            try start(executable, arguments, logPath: logPath, environment: environment, stderr: stderr)
        }
    }

    /// Standard output (and standard error, unless `stderr` names another fd) go to `logPath`;
    /// `environment` is added to this process's. Spawns on the calling thread: async code uses `launch`.
    public static func start(
        _ executable: String, _ arguments: [String], logPath: String, environment: [String: String] = [:],
        stderr: Int32? = nil
    ) throws -> BackgroundProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, stderr ?? 1, 2)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var inherited: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let name = text.split(separator: "=", maxSplits: 1).first, environment[String(name)] == nil {
                inherited.append(text)
            }
            entry += 1
        }
        let envp = (inherited + environment.map { "\($0.key)=\($0.value)" }).map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid = pid_t()
        let attributes = CleanSignalSpawnAttributes()
        let spawned = posix_spawn(&pid, executable, &actions, attributes.pointer, argv, envp)
        guard spawned == 0 else {
            throw ChildError("cannot start \(executable): \(String(cString: strerror(spawned)))")
        }
        return BackgroundProcess(pid: pid, logPath: logPath)
    }

    private init(pid: pid_t, logPath: String) {
        self.pid = pid
        self.logPath = logPath
    }

    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The exit status (or 128 + signal) once the process has ended, nil while it runs. Reaps it.
    public var endedStatus: Int32? { reap(blocking: false) }

    /// Sends `signal` and reaps the process; returns its exit status (or 128 + signal). Safe to call
    /// more than once and from several tasks: the process is reaped exactly once, and a pid that
    /// was reaped is never signalled again (it may belong to another process by then).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async -> Int32 {
        if let code = exitStatus.withLock({ $0 }) { return code }
        kill(pid, signal)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let code = reap(blocking: false) { return code }
            try? await Task.sleep(for: .milliseconds(10))
        }
        if let code = reap(blocking: false) { return code }
        kill(pid, SIGKILL)
        // Polled, not a blocking waitpid: that would hold `exitStatus` for as long as the kernel
        // takes to tear the process down, and every other caller of `reap` would wait behind it.
        while true {
            if let code = reap(blocking: false) { return code }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    private func reap(blocking: Bool) -> Int32? {
        exitStatus.withLock { stored in
            if let stored { return stored }
            var status: Int32 = 0
            guard waitpid(pid, &status, blocking ? 0 : WNOHANG) == pid else { return nil }
            let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
            stored = code
            return code
        }
    }
}
