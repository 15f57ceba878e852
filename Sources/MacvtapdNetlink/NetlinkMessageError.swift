/// A message from the kernel that does not parse: truncated, mis-sized or of an unexpected shape.
public struct NetlinkMessageError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong, in words.
    public var reason: String
    /// Byte offset in the buffer being decoded where the problem was found.
    public var offset: Int

    public init(_ reason: String, offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    public var description: String { "malformed netlink message at byte \(offset): \(reason)" }
}
