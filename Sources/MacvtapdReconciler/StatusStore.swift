import MacvtapdCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The JSON status file: replaced atomically (write, rename) so a reader never sees half.
public struct StatusStore: Sendable {
    public static let defaultPath = "/run/macvtapd/status.json"
    public var path: String

    public init(path: String = StatusStore.defaultPath) {
        self.path = path
    }

    /// The last document written, or nil when there is none yet. A file that exists but cannot be
    /// read or decoded is an error that says why, in words an operator can act on.
    public func read() throws -> StatusDocument? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw StatusStoreError("cannot read \(path): \(errnoText())")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if got < 0 && errno == EINTR { continue }
            guard got >= 0 else { throw StatusStoreError("cannot read \(path): \(errnoText())") }
            if got == 0 { break }
            bytes += chunk[..<got]
        }
        return try StatusDecoding.decode(bytes, path: path)
    }

    public func write(_ document: StatusDocument) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var data = try encoder.encode(document)
        data.append(0x0A)
        try AtomicFile.write(data, to: path)
    }
}

struct StatusStoreError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Writes a file so that readers see either the old or the new content, never a mix. No fsync: these
/// files describe the running daemon and are rewritten on every change; surviving a power loss
/// is not their job, and an fsync per status change would dominate a 1,000-binding converge.
public enum AtomicFile {
    public static func write(_ data: some Collection<UInt8>, to path: String, mode: mode_t = 0o644) throws {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let directory = String(path[..<slash])
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let temporary = "\(path).tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw StatusStoreError("cannot create \(temporary): \(errnoText())") }
        let ok = writeAll(fd, data)
        close(fd)
        guard ok, rename(temporary, path) == 0 else {
            let why = errnoText()
            unlink(temporary)
            throw StatusStoreError("cannot write \(path): \(why)")
        }
    }
}

/// Writes every byte to a blocking `fd`, through short writes and EINTR; false on an error (errno
/// says which).
public func writeAll(_ fd: Int32, _ data: some Collection<UInt8>) -> Bool {
    Array(data).withUnsafeBytes { buffer -> Bool in
        var offset = 0
        while offset < buffer.count {
            let written = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }
}

func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// Folds a run's outcomes into the next status document.
public enum StatusBuilder {
    public static func next(
        previous: StatusDocument?, outcomes: [BindingOutcome], desired: DesiredState,
        config: StatusDocument.ConfigStatus?, now: Double
    ) -> StatusDocument {
        let bindings = outcomes.compactMap { outcome in
            status(for: outcome, before: previous?.binding(outcome.key), desired: desired, now: now)
        }
        return StatusDocument(updated: now, config: config, bindings: bindings)
    }

    /// A binding's next status; nil when it is gone (an orphan torn down).
    public static func status(
        for outcome: BindingOutcome, before: BindingStatus?, desired: DesiredState, now: Double
    ) -> BindingStatus? {
        let plan = outcome.plan
        if !plan.isDesired && outcome.succeeded && plan.phase == .removed { return nil }
        let phase = outcome.failure == nil ? plan.phase : .failed
        var status = BindingStatus(
            vm: plan.key.vm, nic: plan.key.nic, phase: phase, reason: plan.settled.code,
            message: plan.settled.message, since: before?.phase == phase ? before!.since : now,
            attempts: 0, lastError: before?.lastError, lower: plan.lower,
            macvtap: [.attached, .noCarrier, .migrating, .migratedAway].contains(phase)
                ? Ownership.macvtapName(for: plan.key) : nil,
            hub: desired.binding(plan.key)?.hub,
            guestLink: plan.guestLinkVoid ? nil : outcome.guestLinkSet ?? before?.guestLink,
            qmp: desired.vms[plan.key.vm]?.qmp ?? before?.qmp)
        if let failure = outcome.failure {
            status.reason = "ActionFailed"
            status.message = "\(plan.reason.message); failed to \(failure)"
            status.lastError = failure.description
            status.attempts = before?.phase == .failed ? before!.attempts + 1 : 1
        }
        return status
    }

    /// The guest carrier records a status document holds, for the next observation.
    public static func guestLinks(_ document: StatusDocument?) -> [BindingKey: Bool] {
        var links: [BindingKey: Bool] = [:]
        for binding in document?.bindings ?? [] {
            if let up = binding.guestLink { links[binding.key] = up }
        }
        return links
    }
}

/// Encodes the status document for a daemon that rewrites it on every change: each binding's JSON
/// is kept until the owner says that binding changed (`invalidate`), so a change to one of a
/// thousand bindings re-encodes one entry, not the document. The output is the compact form of
/// what `StatusStore.write` writes. Only the JSON is kept, not a copy of each status to compare
/// with: that copy was 0.4 MiB of the daemon's heap at 1,000 bindings.
struct IncrementalStatusEncoder {
    private var cache: [BindingKey: [UInt8]] = [:]
    private let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    /// The binding's status changed (or is gone): its JSON is encoded afresh at the next `encode`.
    mutating func invalidate(_ key: BindingKey) { cache[key] = nil }

    /// `bindings` sorted by key; entries of bindings no longer listed are dropped from the cache.
    /// A listed binding's cached JSON is used unless it was invalidated since it was encoded.
    mutating func encode(
        bindings: [BindingStatus], config: StatusDocument.ConfigStatus?, updated: Double
    ) throws -> [UInt8] {
        var output: [UInt8] = Array(#"{"bindings":["#.utf8)
        var seen = Set<BindingKey>()
        for (position, binding) in bindings.enumerated() {
            let key = binding.key
            seen.insert(key)
            if position > 0 { output.append(UInt8(ascii: ",")) }
            if let cached = cache[key] {
                output += cached
            } else {
                let json = Array(try encoder.encode(binding))
                cache[key] = json
                output += json
            }
        }
        if seen.count != cache.count { cache = cache.filter { seen.contains($0.key) } }
        output += Array(#"],"config":"#.utf8)
        output += config.map { Array((try? encoder.encode($0)) ?? Data("null".utf8)) } ?? Array("null".utf8)
        output += Array(#","format_version":1,"updated":"#.utf8)
        output += Array(try encoder.encode(updated))
        output += Array("}\n".utf8)
        return output
    }
}
