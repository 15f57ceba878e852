import Glibc
import MacvtapdTestSupport

/// The footprint without bindings: short CLI processes and a daemon with nothing to manage.
extension ScaleBench {
    /// Peak RSS (GNU time, the child's own: ChildProcess) of `--version` and of `validate` of the
    /// scale's configuration, medians of 5; and a daemon with an empty configuration, read two
    /// seconds after its control socket appeared.
    func footprintWithoutBindings(
        binary: String, config: String, namespace: NetworkNamespace, directory: TemporaryDirectory
    ) async throws -> (versionPeak: Double, validatePeak: Double, emptyDaemon: ProcessStats.Memory) {
        func medianPeakMiB(_ arguments: [String]) async throws -> Double {
            var peaks: [Int] = []
            for _ in 0..<5 {
                let run = try await ChildProcess.run(binary, arguments)
                guard run.status == 0 else { throw ChildError("\(arguments): exit \(run.status)\n\(run.stderr)") }
                peaks.append(run.maxResidentKiB)
            }
            return Double(peaks.sorted()[peaks.count / 2]) / 1024
        }
        let versionPeak = try await medianPeakMiB(["--version"])
        let validatePeak = try await medianPeakMiB(["validate", "-c", config])
        let empty = try directory.write("empty.yaml", "version: 1\nvms: {}\n")
        let daemon = try startDaemon(
            binary: binary, config: empty, namespace: namespace, directory: directory, prefix: "empty-")
        // Nothing to write with nothing to manage: the control socket says it runs.
        let socket = directory.path + "/empty-run/control.sock"
        guard await waitUntil(timeout: .seconds(30), every: .milliseconds(10), { access(socket, F_OK) == 0 }) != nil
        else { throw ChildError("the empty daemon did not start: \(daemon.log().suffix(2000))") }
        try await Task.sleep(for: .seconds(2))
        let memory = ProcessStats.memory(daemon.pid)
        await daemon.stop()
        return (versionPeak, validatePeak, memory)
    }
}
