import MacvtapdCore
import Testing

@Suite("durations with units")
struct DurationTextTests {
    static let wide = Duration.milliseconds(1)...Duration.seconds(86_400)

    @Test(arguments: [
        ("30s", Duration.seconds(30)), ("500ms", .milliseconds(500)), ("2m", .seconds(120)), ("1h", .seconds(3600)),
        ("30", .seconds(30)), ("0.5", .milliseconds(500)), ("1.5s", .milliseconds(1500)), (" 5s ", .seconds(5)),
    ])
    func parses(_ text: String, _ expected: Duration) {
        #expect(DurationText.parse(text, within: Self.wide) == .success(expected))
    }

    @Test(arguments: ["nan", "inf", "-inf", "1e17", "1e3", "+5", "5 s", "5S", "ms", "", ".", "1..2", "0x1p3", "5d"])
    func refusesWhatIsNotADuration(_ text: String) {
        #expect(DurationText.parse(text, within: Self.wide) == .failure(.malformed(text)))
    }

    @Test(arguments: ["0", "0s", "0.0ms", "-1", "-5s"])
    func refusesZeroAndNegative(_ text: String) {
        #expect(DurationText.parse(text, within: Self.wide) == .failure(.notPositive(text)))
    }

    @Test(arguments: ["25h", "0.5ms", "99999999999999999999999h"])
    func refusesOutOfBounds(_ text: String) {
        #expect(DurationText.parse(text, within: Self.wide) == .failure(.outOfBounds(text, Self.wide)))
    }

    @Test func formatsInTheLargestExactUnit() {
        #expect(DurationText.format(.seconds(30)) == "30s")
        #expect(DurationText.format(.seconds(600)) == "10m")
        #expect(DurationText.format(.milliseconds(1500)) == "1500ms")
        #expect(DurationText.format(.seconds(86_400)) == "24h")
    }
}
