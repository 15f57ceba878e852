/// Interface names as the kernel accepts them (dev_valid_name), checked before anything is sent
/// so the error says what is wrong instead of a bare EINVAL.
public enum InterfaceName {
    /// IFNAMSIZ minus the terminating NUL.
    public static let maximumLength = 15

    public static func validate(_ name: String) throws(InterfaceNameError) {
        let length = name.utf8.count
        guard length > 0 else { throw InterfaceNameError(name: name, reason: "is empty") }
        guard length <= maximumLength else {
            throw InterfaceNameError(name: name, reason: "is \(length) bytes, at most \(maximumLength) allowed")
        }
        guard name != "." && name != ".." else { throw InterfaceNameError(name: name, reason: "is reserved") }
        for scalar in name.unicodeScalars {
            if scalar == "/" || scalar == ":" || scalar == "\0" || scalar.properties.isWhitespace {
                throw InterfaceNameError(name: name, reason: "contains \(scalar.debugDescription)")
            }
        }
    }
}

public struct InterfaceNameError: Error, Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var reason: String

    public var description: String { "invalid interface name \(name.debugDescription): \(reason)" }
}
