/// Polls `condition` every `interval` until it holds or `timeout` passes; returns the instant it
/// held, or nil. Tests, benchmarks and fixtures all wait this way.
@discardableResult
public func waitUntil(
    timeout: Duration, every interval: Duration = .milliseconds(5), _ condition: () async throws -> Bool
) async rethrows -> ContinuousClock.Instant? {
    poolThreadEntersFixture()
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return ContinuousClock.now }
        if interval > .zero { try? await Task.sleep(for: interval) }
    }
    return try await condition() ? ContinuousClock.now : nil
}

/// `waitUntil` as a yes/no for `#expect(await eventually { ... })`.
public func eventually(
    within timeout: Duration = .seconds(5), every interval: Duration = .milliseconds(5),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    try await waitUntil(timeout: timeout, every: interval, condition) != nil
}
