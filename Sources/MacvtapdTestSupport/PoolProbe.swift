import Foundation
import Glibc
import Synchronization

/// Makes starvation of Swift's cooperative pool visible in a test run. swift-testing runs every
/// test on that pool (two threads on a two-core machine): a test that blocks a pool thread in a
/// syscall halves every other test's progress, two at once stop them all, and tests with deadlines
/// then fail at random.
///
/// Off unless `MACVTAPD_POOL_PROBE` is set (`1`: the report goes to stderr at exit; a path starting
/// with `/`: it is appended to that file as well). When on, a task sleeps 10 ms on the pool over and
/// over and records how late each wake came; a watchdog thread of its own looks at the pool threads
/// whenever a wake is over 50 ms late and notes the syscall each one sits in (from
/// /proc/self/task/TID/syscall), which names the kind of blocking call. The report, at exit: the
/// worst lateness and when, a histogram, and the late wakes with what the pool threads were doing.
///
/// Fixtures start it (`waitUntil`, `offPool`, the namespace and the embedded host), so the first test
/// that uses any of them turns it on for the rest of the process; when the variable is unset the
/// cost is one checked static.
public enum PoolProbe {
    public static let variable = "MACVTAPD_POOL_PROBE"

    /// Starts the probe once, if the variable asks for it.
    @inline(__always)
    public static func startIfEnabled() { _ = recorder }

    static let recorder: PoolProbeRecorder? = {
        guard let raw = getenv(variable) else { return nil }
        let value = String(cString: raw)
        guard !value.isEmpty, value != "0" else { return nil }
        let recorder = PoolProbeRecorder(reportPath: value.hasPrefix("/") ? value : nil)
        recorder.start()
        atexit { PoolProbe.recorder?.report() }
        return recorder
    }()
}

final class PoolProbeRecorder: Sendable {
    static let period: Int64 = 10_000_000
    /// A wake later than this is listed on its own, with what the pool threads were doing.
    static let listed: Int64 = 50_000_000
    /// How late a wake must be before the watchdog looks at the pool threads.
    static let inspected: Int64 = 50_000_000
    static let buckets: [Int64] = [10, 50, 100, 250, 500, 1000].map { $0 * 1_000_000 }

    struct Late {
        var at: Int64
        var wall: String
        var lateness: Int64
        var threads: [String]
    }

    struct State {
        var ticks = 0
        var worst: Late?
        var histogram = [Int](repeating: 0, count: PoolProbeRecorder.buckets.count)
        var late: [Late] = []
        var poolThreads: Set<Int32> = []
        /// Each pool thread's time on a CPU and waiting for one (ns, /proc/.../schedstat) when
        /// the current tick began: tells a thread that computes from one that cannot get a CPU.
        var schedstat: [Int32: (run: Int64, wait: Int64)] = [:]
        /// What the watchdog saw on the pool threads of the current tick.
        var seen: [String] = []
        /// How often each syscall was seen on a pool thread during a late wake.
        var tally: [String: Int] = [:]
    }

    let reportPath: String?
    let started = monotonicNanoseconds()
    let state = Mutex(State())
    /// When the current tick's sleep should end (monotonic ns), 0 between ticks.
    let due = Atomic<Int64>(0)
    /// The due time the watchdog last looked at, and when.
    let inspectedDue = Atomic<Int64>(0)

    init(reportPath: String?) { self.reportPath = reportPath }

    func start() {
        Task.detached(priority: Task.currentPriority) { [self] in
            while true {
                let before = monotonicNanoseconds()
                due.store(before + Self.period, ordering: .relaxed)
                try? await Task.sleep(for: .nanoseconds(Self.period))
                let woke = monotonicNanoseconds()
                due.store(0, ordering: .relaxed)
                record(lateness: woke - before - Self.period, at: woke, thread: currentThreadID())
            }
        }
        let watchdog = Thread { [self] in
            while true {
                usleep(5000)
                inspect()
            }
        }
        watchdog.name = "pool-probe"
        watchdog.start()
    }

    private func record(lateness: Int64, at instant: Int64, thread: Int32) {
        state.withLock { state in
            state.ticks += 1
            state.poolThreads.insert(thread)
            for (index, bound) in Self.buckets.enumerated() where lateness > bound { state.histogram[index] += 1 }
            let late = Late(at: instant - started, wall: wallClockText(), lateness: lateness, threads: state.seen)
            if lateness > (state.worst?.lateness ?? 0) { state.worst = late }
            if lateness > Self.listed && state.late.count < 500 { state.late.append(late) }
            state.seen = []
            for tid in state.poolThreads { state.schedstat[tid] = Self.schedstat(tid) }
        }
    }

    /// Looks at the pool threads once a tick is `inspected` late, then every further 200 ms.
    private func inspect() {
        let due = due.load(ordering: .relaxed)
        guard due != 0 else { return }
        let now = monotonicNanoseconds()
        let lastLook = inspectedDue.load(ordering: .relaxed)
        let threshold = lastLook > due ? lastLook + 200_000_000 : due + Self.inspected
        guard now >= threshold else { return }
        inspectedDue.store(now, ordering: .relaxed)
        let (threads, before) = state.withLock { ($0.poolThreads, $0.schedstat) }
        let seen = threads.sorted().map { tid in
            "+\(milliseconds(now - due)) ms tid \(tid) " + Self.describe(tid) + Self.cpu(tid, since: before[tid])
        }
        state.withLock { state in
            guard self.due.load(ordering: .relaxed) == due else { return }
            state.seen += seen
            for line in seen {
                let call = line.split(separator: " ").dropFirst(4).first.map(String.init) ?? "?"
                state.tally[call.split(separator: "(").first.map(String.init) ?? call, default: 0] += 1
            }
        }
    }

    static func schedstat(_ tid: Int32) -> (run: Int64, wait: Int64) {
        let fields = readProc("/proc/self/task/\(tid)/schedstat").split(separator: " ").compactMap { Int64($0) }
        return fields.count >= 2 ? (fields[0], fields[1]) : (0, 0)
    }

    /// ", this tick: on a CPU X ms, waiting for one Y ms".
    static func cpu(_ tid: Int32, since before: (run: Int64, wait: Int64)?) -> String {
        guard let before else { return "" }
        let now = schedstat(tid)
        return ", this tick on a CPU \(milliseconds(now.run - before.run)) ms, waiting for one"
            + " \(milliseconds(now.wait - before.wait)) ms"
    }

    /// The syscall a thread sits in (with the argument that says most about who made it) and the
    /// kernel function it waits in, or "running" when it is in user space.
    static func describe(_ tid: Int32) -> String {
        let syscall = readProc("/proc/self/task/\(tid)/syscall").split(separator: " ")
        let state = readProc("/proc/self/task/\(tid)/stat").split(separator: ")").last?.split(separator: " ").first
        let wchan = readProc("/proc/self/task/\(tid)/wchan")
        guard let first = syscall.first, let number = Int(first) else {
            return "running (state \(state.map(String.init) ?? "?"))"
        }
        let arguments = syscall.dropFirst().prefix(6).map { UInt64($0.dropFirst(2), radix: 16) ?? 0 }
        let name = syscallNames[number] ?? "syscall \(number)"
        var detail = ""
        if number == 7, arguments.count > 2 {
            detail = "(timeout \(Int32(truncatingIfNeeded: arguments[2])) ms)"
        } else if number == 61, let first = arguments.first {
            let pid = Int32(truncatingIfNeeded: first)
            let command = readProc("/proc/\(pid)/comm").trimmingCharacters(in: .whitespacesAndNewlines)
            detail = "(pid \(pid) \(command))"
        } else if [0, 3, 45, 47, 49].contains(number), let first = arguments.first {
            let fd = Int32(truncatingIfNeeded: first)
            detail = "(fd \(fd) \(readLink("/proc/self/fd/\(fd)")))"
        }
        return "\(name)\(detail) in \(wchan.isEmpty ? "?" : wchan) (state \(state.map(String.init) ?? "?"))"
    }

    static let syscallNames: [Int: String] = [
        0: "read", 1: "write", 3: "close", 7: "poll", 16: "ioctl", 23: "select", 35: "nanosleep", 41: "socket",
        42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 49: "bind",
        56: "clone", 58: "vfork", 59: "execve", 61: "wait4", 62: "kill", 202: "futex", 230: "clock_nanosleep",
        232: "epoll_wait", 257: "openat", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 308: "setns",
        435: "clone3", 166: "umount2", 87: "unlink", 82: "rename",
    ]

    func report() {
        let lines: [String] = state.withLock { state in
            guard let worst = state.worst else { return ["pool probe: no wakes recorded"] }
            var lines = [
                "pool probe: \(state.ticks) wakes of 10 ms over \(milliseconds(monotonicNanoseconds() - started)) ms;"
                    + " worst lateness \(milliseconds(worst.lateness)) ms at +\(milliseconds(worst.at)) ms"
                    + " (\(worst.wall) UTC)",
                "pool probe: wakes later than "
                    + zip(Self.buckets, state.histogram).map { "\(milliseconds($0)) ms: \($1)" }.joined(separator: ", "),
                "pool probe: pool threads \(state.poolThreads.sorted()); seen during late wakes: "
                    + state.tally.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "),
            ]
            for late in state.late {
                lines.append(
                    "pool probe: late \(milliseconds(late.lateness)) ms at +\(milliseconds(late.at)) ms (\(late.wall))")
                lines += late.threads.map { "pool probe:     \($0)" }
            }
            return lines
        }
        let text = lines.joined(separator: "\n") + "\n"
        _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
        if let reportPath {
            let fd = open(reportPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd >= 0 {
                _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
                close(fd)
            }
        }
    }
}

/// The kernel's id of the calling thread, from /proc/thread-self ("PID/task/TID").
private func currentThreadID() -> Int32 {
    Int32(readLink("/proc/thread-self").split(separator: "/").last ?? "") ?? 0
}

private func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

private func milliseconds(_ nanoseconds: Int64) -> String {
    String(nanoseconds / 1_000_000) + "." + String(nanoseconds / 100_000 % 10)
}

private func wallClockText() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var parts = tm()
    var seconds = now.tv_sec
    gmtime_r(&seconds, &parts)
    func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
    let millis = now.tv_nsec / 1_000_000
    let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
    return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)"
}

private func readProc(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .newlines) : ""
}

private func readLink(_ path: String) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    let count = readlink(path, &buffer, buffer.count - 1)
    return count > 0 ? String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
}
