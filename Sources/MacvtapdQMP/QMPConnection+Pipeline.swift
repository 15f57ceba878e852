import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Pipelines: a VM's steps written back to back on one lock, their replies gathered as they come.
extension QMPConnection {
    /// One command of a pipeline.
    struct Step: Sendable {
        var command: String
        var arguments: JSONValue?
        var fd: Int32?
    }

    /// Writes every step back to back, in order, without waiting for replies (each fd on the
    /// sendmsg of its own command's first bytes), then waits for every reply. QEMU runs a
    /// monitor's commands in order, so a step may rely on the ones before it; each step gets its own
    /// result. A step whose write fails, and the steps after it, fail with that error.
    func executePipeline(_ steps: [Step], timeout: Duration) async throws -> [Result<JSONValue, QMPError>] {
        guard !steps.isEmpty else { return [] }
        let firstID = state.withLock { state in
            defer { state.nextID += Int64(steps.count) }
            return state.nextID
        }
        let ids = (0..<Int64(steps.count)).map { firstID + $0 }
        let messages = steps.map { Self.encode(command: $0.command, arguments: $0.arguments) }
        let collected = PipelineResults(count: steps.count)
        let results: [Result<JSONValue, any Error>] = await withTaskCancellationHandler {
            await withCheckedContinuation {
                (continuation: CheckedContinuation<[Result<JSONValue, any Error>], Never>) in
                collected.onComplete { continuation.resume(returning: $0) }
                let deadline = ContinuousClock.now + timeout
                let failure: String? = state.withLock { state in
                    if let failure = state.failure { return failure }
                    for (index, (id, step)) in zip(ids, steps).enumerated() {
                        state.pending[id] = Pending(
                            command: step.command, resume: { collected.set(index, $0) }, deadline: deadline,
                            timeout: timeout)
                    }
                    if state.readerWakesAt.map({ deadline < $0 }) ?? true {
                        var byte: UInt8 = 1
                        _ = Glibc.write(wakeWrite, &byte, 1)
                    }
                    return nil
                }
                if let failure {
                    for (index, step) in steps.enumerated() {
                        collected.set(
                            index, .failure(QMPError.connectionClosed(command: step.command, reason: failure)))
                    }
                    return
                }
                if Task.isCancelled {
                    for id in ids { complete(id: id, with: .failure(CancellationError())) }
                    return
                }
                // One lock for the whole pipeline: no other caller's command lands between its steps.
                writeSide.withLock { fd in
                    for (index, step) in steps.enumerated() {
                        do throws(QMPError) {
                            try write(
                                messages[index], passing: step.fd, command: step.command, id: ids[index], on: fd)
                        } catch {
                            for id in ids[index...] { complete(id: id, with: .failure(error)) }
                            return
                        }
                    }
                }
            }
        } onCancel: {
            for id in ids { complete(id: id, with: .failure(CancellationError())) }
        }
        for case .failure(let error as CancellationError) in results { throw error }
        return results.map { result in
            result.mapError { error in
                error as? QMPError ?? .connectionClosed(command: "pipeline", reason: "\(error)")
            }
        }
    }
}

/// The replies of one pipeline, gathered as they come (from the reader thread, a timeout, a send
/// failure or a cancellation) until every step has one.
private final class PipelineResults: Sendable {
    private struct State {
        var results: [Result<JSONValue, any Error>?]
        var missing: Int
        var done: (@Sendable ([Result<JSONValue, any Error>]) -> Void)?
    }
    private let state: Mutex<State>

    init(count: Int) {
        state = Mutex(State(results: Array(repeating: nil, count: count), missing: count))
    }

    func onComplete(_ done: @escaping @Sendable ([Result<JSONValue, any Error>]) -> Void) {
        state.withLock { $0.done = done }
    }

    func set(_ index: Int, _ result: Result<JSONValue, any Error>) {
        let finished: (([Result<JSONValue, any Error>]) -> Void, [Result<JSONValue, any Error>])? = state.withLock {
            state in
            guard state.results[index] == nil else { return nil }
            state.results[index] = result
            state.missing -= 1
            guard state.missing == 0, let done = state.done else { return nil }
            state.done = nil
            return (done, state.results.map { $0! })
        }
        if let (done, results) = finished { done(results) }
    }
}
