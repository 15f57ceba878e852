import ArgumentParser
import MacvtapdCore

/// The duration flags' bounds and parsing: `30s`, `500ms`, `2m`, `1h` or bare seconds, refused with a
/// usage error (exit 2) when malformed, not positive, not finite or out of bounds.
enum DurationOption {
    /// A QMP exchange that takes more than a few minutes is a hung VM, not a slow one.
    static let qmpTimeout = Duration.milliseconds(10)...Duration.seconds(600)
    /// An apply through the daemon waits for attaches (milliseconds each) and for VMs that do not answer
    /// (the QMP timeout); ten minutes is far past either.
    static let applyTimeout = Duration.milliseconds(100)...Duration.seconds(600)
    /// Below 100 ms a resync would keep a core busy; above a day nothing is repaired in practice.
    static let resync = Duration.milliseconds(100)...Duration.seconds(86_400)

    /// A transform for `@Option(transform:)` that throws a message ArgumentParser shows after the value.
    static func parser(within bounds: ClosedRange<Duration>) -> @Sendable (String) throws -> Duration {
        { text in
            switch DurationText.parse(text, within: bounds) {
            case .success(let duration): return duration
            case .failure(let error): throw ValidationError(error.description)
            }
        }
    }

    /// The help text's suffix: the accepted forms and the default.
    static func help(_ summary: String, default value: Duration) -> ArgumentHelp {
        ArgumentHelp(
            "\(summary) A number with a unit (500ms, 30s, 2m, 1h) or bare seconds (default: \(DurationText.format(value))).",
            valueName: "duration")
    }
}
