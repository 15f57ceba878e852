/// Durations as operators write them next to systemd and the tools around it: `30s`, `500ms`, `2m`,
/// `1h`, or a bare number of seconds (`30`, `0.5`).
///
/// Parsing is strict and bounded: a value that is not finite, not positive, or outside the caller's
/// bounds is refused with a message in the user's words, never converted into a trap.
public enum DurationText {
    /// The units accepted after the number, in milliseconds.
    static let units: [(suffix: String, milliseconds: Double)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000),
    ]

    /// Parses `text` into a duration within `bounds` (inclusive), or says why it cannot.
    public static func parse(_ text: String, within bounds: ClosedRange<Duration>) -> Result<Duration, DurationError> {
        var trimmed = text.trimmingSpaces
        // A minus sign is read so that "-5s" is refused as negative rather than as garbage.
        let negative = trimmed.hasPrefix("-")
        if negative { trimmed.removeFirst() }
        // Longest suffix first: "ms" must not be read as "m" after the number "500s"-like garbage.
        let unit = units.sorted { $0.suffix.count > $1.suffix.count }.first { trimmed.hasSuffix($0.suffix) }
        let number = unit.map { String(trimmed.dropLast($0.suffix.count)) } ?? trimmed
        guard isPlainDecimal(number), let value = Double(number) else {
            return .failure(.malformed(text))
        }
        let milliseconds = value * (unit?.milliseconds ?? 1000)
        if negative { return .failure(.notPositive(text)) }
        // isPlainDecimal already refuses "nan" and "inf"; an overflowing product is still refused here.
        guard milliseconds.isFinite else { return .failure(.outOfBounds(text, bounds)) }
        guard milliseconds > 0 else { return .failure(.notPositive(text)) }
        let lower = Double(bounds.lowerBound.totalMilliseconds)
        let upper = Double(bounds.upperBound.totalMilliseconds)
        guard milliseconds >= lower, milliseconds <= upper else { return .failure(.outOfBounds(text, bounds)) }
        // Microsecond precision is plenty for timeouts and intervals; within bounds this cannot overflow.
        return .success(.microseconds(Int64((milliseconds * 1000).rounded())))
    }

    /// Digits with at most one decimal point: no sign, exponent, hex, `nan` or `inf`.
    private static func isPlainDecimal(_ text: String) -> Bool {
        var digits = 0
        var points = 0
        for byte in text.utf8 {
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                digits += 1
            } else if byte == UInt8(ascii: ".") {
                points += 1
            } else {
                return false
            }
        }
        return digits > 0 && points <= 1
    }

    /// `30s`, `500ms`, `2m`, `1.5s`: the shortest exact rendering in the largest fitting unit.
    public static func format(_ duration: Duration) -> String {
        let microseconds = duration.totalMicroseconds
        for (suffix, milliseconds) in units.reversed() {
            let unit = Int64(milliseconds * 1000)
            if microseconds % unit == 0 { return "\(microseconds / unit)\(suffix)" }
        }
        if microseconds % 1000 == 0 { return "\(microseconds / 1000)ms" }
        return "\(Double(microseconds) / 1_000_000)s"
    }
}

/// Why a duration was refused.
public enum DurationError: Error, Hashable, Sendable, CustomStringConvertible {
    case malformed(String)
    case notPositive(String)
    case outOfBounds(String, ClosedRange<Duration>)

    public var description: String {
        switch self {
        case .malformed(let text):
            return "'\(text)' is not a duration; write a number with a unit (500ms, 30s, 2m, 1h) or a number of seconds"
        case .notPositive(let text):
            return "'\(text)' is not a positive duration; it must be more than zero"
        case .outOfBounds(let text, let bounds):
            return "'\(text)' is out of range; it must be between \(DurationText.format(bounds.lowerBound)) "
                + "and \(DurationText.format(bounds.upperBound))"
        }
    }
}

extension Duration {
    /// Whole milliseconds, rounded toward zero.
    var totalMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Whole microseconds, rounded toward zero.
    var totalMicroseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
