/// A problem found in the operator's input, located precisely enough to fix it.
public struct Diagnostic: Error, Hashable, Sendable, CustomStringConvertible {
    public var location: SourceLocation?
    /// The file or directory a problem without a line is about (it cannot be read, it is a FIFO, ...).
    public var path: String?
    public var message: String

    public init(_ message: String, at location: SourceLocation?) {
        self.location = location
        self.path = location?.file
        self.message = message
    }

    /// A problem with a whole file or directory: CI annotators still get the `file:` prefix.
    public init(_ message: String, path: String) {
        self.location = nil
        self.path = path
        self.message = message
    }

    /// `file:line:column: error: message`, the shape compilers use and editors jump to; `file: error:
    /// message` when the problem has no line.
    public var description: String {
        if let location { return "\(location): error: \(message)" }
        if let path { return "\(path): error: \(message)" }
        return "error: \(message)"
    }
}
