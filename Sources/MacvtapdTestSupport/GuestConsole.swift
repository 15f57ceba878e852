import Glibc
import MacvtapdCore
import Synchronization

/// What the test guest printed on its serial console so far: complete lines, and the `GUEST`
/// lines among them parsed (`GuestEvent`), read from the console file as QEMU appends to it.
public struct GuestTranscript: Sendable {
    /// Every line so far (kernel output included), without line terminators.
    public private(set) var lines: [String] = []
    /// Every `GUEST` event with the index of its line in `lines`.
    public private(set) var events: [(line: Int, event: GuestEvent)] = []
    /// When the first `GUEST READY` was read.
    public private(set) var readyAt: ContinuousClock.Instant?
    private var pending: [UInt8] = []

    init() {}

    /// Reads what the file behind `fd` gained since the last call.
    mutating func read(from fd: Int32) {
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            pending.append(contentsOf: buffer[..<count])
        }
        // A line is complete only at its newline: QEMU may have written half of it so far.
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            var line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            while line.hasSuffix("\r") { line.removeLast() }
            if let event = GuestEvent(line: line) {
                events.append((lines.count, event))
                if event == .ready, readyAt == nil { readyAt = .now }
            }
            lines.append(line)
        }
    }

    /// The last identity the guest reported for each interface, in report order.
    var identities: [GuestNICIdentity] {
        events.compactMap { entry in
            if case .nic(let identity) = entry.event { return identity }
            return nil
        }
    }
}

/// A guest whose console a test reads: the waits every guest fixture offers, over its transcript.
/// `GuestVM` (a QEMU the fixture spawned) and `GuestConsole` (a console file some other launcher's
/// QEMU writes, such as libvirt's) conform.
public protocol GuestConsoleReading: Sendable {
    /// The transcript, refreshed from the console first.
    func transcript() -> GuestTranscript
    /// Polls the console until `check` finds something, failing when the guest is known to be gone
    /// or after `timeout`.
    func poll<T>(for description: String, timeout: Duration, _ check: (GuestTranscript) -> T?)
        async throws(GuestVMError) -> T
}

extension GuestConsoleReading {
    /// Every console line so far (kernel output included), without line terminators.
    public var lines: [String] { transcript().lines }

    /// Every `GUEST` line so far, parsed.
    public var events: [GuestEvent] { transcript().events.map(\.event) }

    /// The identity the guest last reported for one of its interfaces (`eth0`, `bond0`).
    public func nicIdentity(_ interface: String) -> GuestNICIdentity? {
        transcript().identities.last { $0.name == interface }
    }

    /// The guest interface behind a QEMU NIC, matched by MAC.
    public func nicIdentity(_ nic: GuestNIC) -> GuestNICIdentity? {
        transcript().identities.last { $0.mac == nic.mac }
    }

    /// The last carrier state the guest reported for an interface.
    public func carrier(_ interface: String) -> Bool? {
        transcript().events.reversed().lazy.compactMap { entry -> Bool? in
            if case .carrier(interface, let up) = entry.event { return up }
            return nil
        }.first
    }

    /// Waits for a console line that matches, looking at lines from index `start` on (`lines.count`
    /// before an action makes the wait see only what follows the action).
    @discardableResult
    public func waitForLine(
        matching predicate: (String) -> Bool, from start: Int = 0, timeout: Duration = .seconds(10),
        description: String = "matching console line"
    ) async throws(GuestVMError) -> String {
        try await poll(for: description, timeout: timeout) { transcript in
            transcript.lines.dropFirst(start).first(where: predicate)
        }
    }

    /// Waits for exactly `line` on the console.
    @discardableResult
    public func waitForLine(
        _ line: String, from start: Int = 0, timeout: Duration = .seconds(10)
    ) async throws(GuestVMError) -> String {
        try await waitForLine(matching: { $0 == line }, from: start, timeout: timeout, description: "'\(line)'")
    }

    /// Waits until the guest's last reported carrier for `interface` is `up` (at once if it already
    /// is) and returns how long that took.
    @discardableResult
    public func waitForCarrier(
        interface: String, up: Bool, timeout: Duration = .seconds(10)
    ) async throws(GuestVMError) -> Duration {
        let start = ContinuousClock.now
        _ = try await poll(for: "GUEST CARRIER \(interface) \(up ? "up" : "down")", timeout: timeout) { transcript in
            let last = transcript.events.last { entry in
                if case .carrier(interface, _) = entry.event { return true }
                return false
            }
            return last?.event == .carrier(interface: interface, up: up) ? true : nil
        }
        return ContinuousClock.now - start
    }

    /// `waitForCarrier` for the guest interface behind a QEMU NIC.
    @discardableResult
    public func waitForCarrier(
        nic: GuestNIC, up: Bool, timeout: Duration = .seconds(10)
    ) async throws(GuestVMError) -> Duration {
        guard let identity = nicIdentity(nic) else { throw .unknownInterface("\(nic.id) (mac \(nic.mac))") }
        return try await waitForCarrier(interface: identity.name, up: up, timeout: timeout)
    }

    /// Waits for a `GUEST` event that matches, among events on lines from index `start` on.
    @discardableResult
    public func waitForEvent(
        matching predicate: (GuestEvent) -> Bool, from start: Int = 0, timeout: Duration = .seconds(10),
        description: String = "matching GUEST event"
    ) async throws(GuestVMError) -> GuestEvent {
        try await poll(for: description, timeout: timeout) { transcript in
            transcript.events.first { $0.line >= start && predicate($0.event) }?.event
        }
    }
}

/// The serial console of a test guest that another launcher runs (libvirt's `<serial
/// type='file'>`), read as the file grows. Nothing tells it that the guest's QEMU is gone: its
/// waits end at their timeout.
public final class GuestConsole: GuestConsoleReading {
    public let path: String
    private let state: Mutex<(fd: Int32, transcript: GuestTranscript)>

    /// Opens (creating it when missing) the file QEMU appends the console to; it must never be
    /// truncated while this reads it.
    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GuestVMError.system(operation: "open \(path)", errno: errno) }
        self.path = path
        state = Mutex((fd, GuestTranscript()))
    }

    deinit { close() }

    public func close() {
        state.withLock { state in
            if state.fd >= 0 { Glibc.close(state.fd) }
            state.fd = -1
        }
    }

    public func transcript() -> GuestTranscript {
        state.withLock { state in
            state.transcript.read(from: state.fd)
            return state.transcript
        }
    }

    public func poll<T>(for description: String, timeout: Duration, _ check: (GuestTranscript) -> T?)
        async throws(GuestVMError) -> T
    {
        let deadline = ContinuousClock.now + timeout
        while true {
            let transcript = transcript()
            if let found = check(transcript) { return found }
            if ContinuousClock.now >= deadline {
                throw .timeout(waitingFor: description, after: timeout, consoleTail: Array(transcript.lines.suffix(20)))
            }
            do {
                try await Task.sleep(for: .milliseconds(5))
            } catch {
                throw .cancelled
            }
        }
    }
}
