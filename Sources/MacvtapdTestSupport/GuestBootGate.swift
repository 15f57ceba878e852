/// One TCG guest boots at a time in a test process. A boot keeps a core busy for seconds (kernel
/// and initramfs under software emulation); several at once, on a 2-core machine, leave the rest
/// of the parallel suite (controller tests that expect a retry within 100 ms) too little CPU to
/// keep its own time. Running guests cost little: only the boot is gated.
public actor GuestBootGate {
    public static let shared = GuestBootGate()

    private var booting = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    public func acquire() async {
        guard booting else {
            booting = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    public func release() {
        if waiting.isEmpty {
            booting = false
        } else {
            waiting.removeFirst().resume()
        }
    }

    /// Runs `body` (a boot) as the only one in the process.
    public func whileBooting<Result: Sendable>(_ body: @Sendable () async throws -> Result) async rethrows -> Result {
        await acquire()
        do {
            let result = try await body()
            release()
            return result
        } catch {
            release()
            throw error
        }
    }
}
