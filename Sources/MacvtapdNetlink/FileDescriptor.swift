import Glibc
import Synchronization

/// An owned file descriptor that is closed exactly once: by `close()`, or on deinit, unless it was
/// taken out with `take()` (to hand it to QEMU over SCM_RIGHTS, for instance).
public final class FileDescriptor: Sendable, CustomStringConvertible {
    private let value: Mutex<Int32?>

    public init(adopting rawValue: Int32) {
        value = Mutex(rawValue)
    }

    deinit {
        if let fd = value.withLock({ $0 }) { Glibc.close(fd) }
    }

    /// Runs `body` with the descriptor held open: a concurrent `close()` waits for it.
    public func withRawValue<Result>(_ body: (Int32) throws -> Result) throws -> Result {
        try value.withLock { fd in
            guard let fd else { throw FileDescriptorClosedError() }
            return try body(fd)
        }
    }

    /// Gives up ownership: the caller closes the returned descriptor. nil if already closed/taken.
    public func take() -> Int32? {
        value.withLock { fd in
            defer { fd = nil }
            return fd
        }
    }

    public func close() {
        if let fd = take() { Glibc.close(fd) }
    }

    public var isOpen: Bool { value.withLock { $0 != nil } }

    public var description: String {
        value.withLock { fd in fd.map { "fd \($0)" } ?? "closed fd" }
    }
}

public struct FileDescriptorClosedError: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String { "file descriptor already closed or handed over" }
}
