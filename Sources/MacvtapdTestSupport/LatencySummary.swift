/// Percentiles of a set of measured durations, for benchmark tables.
public struct LatencySummary: Sendable, CustomStringConvertible {
    public let count: Int
    public let median: Duration
    public let p99: Duration
    public let max: Duration

    /// Nearest-rank percentiles; `samples` must not be empty.
    public init(_ samples: [Duration]) {
        precondition(!samples.isEmpty, "no samples")
        let sorted = samples.sorted()
        func rank(_ percentile: Double) -> Duration {
            let index = Int((percentile / 100 * Double(sorted.count)).rounded(.up)) - 1
            return sorted[Swift.max(0, Swift.min(sorted.count - 1, index))]
        }
        count = sorted.count
        median = rank(50)
        p99 = rank(99)
        max = sorted[sorted.count - 1]
    }

    public var description: String {
        "n=\(count) median=\(Self.milliseconds(median)) p99=\(Self.milliseconds(p99)) max=\(Self.milliseconds(max))"
    }

    /// `1.234 ms`
    public static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let ms = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return String(format3: ms) + " ms"
    }
}

extension String {
    /// Three decimals without Foundation's formatter.
    init(format3 value: Double) {
        let scaled = Int64((value * 1000).rounded())
        let whole = scaled / 1000
        let fraction = abs(scaled % 1000)
        let padded = String(fraction)
        self = "\(whole)." + String(repeating: "0", count: 3 - padded.count) + padded
    }
}
