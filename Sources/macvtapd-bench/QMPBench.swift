import ArgumentParser
import MacvtapdQMP
import MacvtapdTestSupport

#if canImport(Glibc)
    import Glibc
#endif

struct QMPBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp", abstract: "QMP round trip and attach sequence latency against a real QEMU.",
        discussion: """
            Starts one QEMU (q35, TCG, one virtio-net NIC on hub 10) with two QMP monitors. Measures \
            query-status through QMPClient and, as the baseline, through a bare blocking socket on the \
            second monitor; then the attach sequence (getfd + netdev_add tap + netdev_add hubport + \
            set_link up) with a real tap fd, one command after another and then pipelined (written back \
            to back, as the daemon sends them), each followed by an untimed detach (netdev_del x2). \
            Needs root (/dev/net/tun).
            """)

    @Option(help: "Measured iterations of each operation.")
    var runs = 500

    func validate() throws {
        guard runs > 0 else { throw ValidationError("--runs must be positive") }
    }

    func run() async throws {
        let qemu = try await QEMUProcess.launch(QEMUOptions(additionalMonitors: ["baseline.sock"]))
        do {
            try await measure(qemu: qemu, baselinePath: qemu.additionalMonitorPaths[0])
        } catch {
            await qemu.terminate()
            throw error
        }
        await qemu.terminate()
    }

    private func measure(qemu: QEMUProcess, baselinePath: String) async throws {
        let client = try await QMPClient.connect(to: qemu.qmpSocketPath)
        let baseline = try RawQMPSocket(path: baselinePath)
        defer { baseline.close() }
        let tap = try ProbeTap()
        defer { tap.close() }
        let clock = ContinuousClock()

        for _ in 0..<20 {
            _ = try await client.queryStatus()
            try baseline.roundTrip(#"{"execute": "query-status"}"#)
        }

        var raw: [Duration] = []
        for _ in 0..<runs {
            raw.append(try clock.measure { try baseline.roundTrip(#"{"execute": "query-status"}"#) })
        }
        var status: [Duration] = []
        for _ in 0..<runs {
            let start = clock.now
            _ = try await client.queryStatus()
            status.append(clock.now - start)
        }
        var attach: [Duration] = []
        var steps: [[Duration]] = Array(repeating: [], count: 4)
        for _ in 0..<runs {
            let start = clock.now
            try await client.getfd(name: "bench.fd", fd: tap.fd)
            let afterGetfd = clock.now
            do {
                try await client.addTapNetdev(id: "bench.tap", fdName: "bench.fd")
            } catch {
                try? await client.closefd(name: "bench.fd")
                throw error
            }
            let afterTap = clock.now
            try await client.addHubPort(id: "bench.port", hubID: 10, netdev: "bench.tap")
            let afterPort = clock.now
            try await client.setLink(name: "nic0", up: true)
            let end = clock.now
            attach.append(end - start)
            for (index, step) in [afterGetfd - start, afterTap - afterGetfd, afterPort - afterTap, end - afterPort]
                .enumerated()
            {
                steps[index].append(step)
            }
            try await client.deleteNetdev(id: "bench.port")
            try await client.deleteNetdev(id: "bench.tap")
        }

        // The same four commands pipelined: written back to back, one exchange (what the daemon does).
        var pipelined: [Duration] = []
        for _ in 0..<runs {
            let start = clock.now
            let replies = try await client.executePipelined([
                QMPCommand("getfd", arguments: ["fdname": "bench.fd"], passing: tap.fd),
                QMPCommand(
                    "netdev_add", arguments: ["type": "tap", "id": "bench.tap", "fd": "bench.fd", "vhost": false]),
                QMPCommand(
                    "netdev_add",
                    arguments: ["type": "hubport", "id": "bench.port", "hubid": 10, "netdev": "bench.tap"]),
                QMPCommand("set_link", arguments: ["name": "nic0", "up": true]),
            ])
            pipelined.append(clock.now - start)
            for case .failure(let error) in replies { throw error }
            try await client.deleteNetdev(id: "bench.port")
            try await client.deleteNetdev(id: "bench.tap")
        }

        await client.close()
        print("QEMU \(client.greeting.version) (\(client.greeting.package)), \(runs) runs each")
        print("query-status  bare socket (baseline)  \(LatencySummary(raw))")
        print("query-status  QMPClient               \(LatencySummary(status))")
        print("attach        QMPClient (4 commands)  \(LatencySummary(attach))")
        for (name, samples) in zip(["getfd", "netdev_add tap", "netdev_add hubport", "set_link"], steps) {
            print("  " + name.padding(toLength: 36) + "\(LatencySummary(samples))")
        }
        print("attach        pipelined (4 commands)  \(LatencySummary(pipelined))")
    }
}

/// The least a QMP client can do: blocking write, blocking read up to the reply line. Events are
/// skipped. The baseline that shows what QMPClient's threads, continuations and JSON cost.
private final class RawQMPSocket {
    private let fd: Int32
    private var buffer: [UInt8] = []

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw QEMUFixtureError("baseline connect to \(path) failed: errno \(errno)") }
        _ = try readLine()  // greeting
        try roundTrip(#"{"execute": "qmp_capabilities"}"#)
    }

    func close() { Glibc.close(fd) }

    func roundTrip(_ command: String) throws {
        let bytes = Array((command + "\n").utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw QEMUFixtureError("baseline send failed: errno \(errno)")
        }
        while true {
            let line = try readLine()
            if !line.starts(with: Array(#"{"event""#.utf8)) { return }
        }
    }

    private func readLine() throws -> ArraySlice<UInt8> {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = buffer[..<newline]
                buffer.removeFirst(newline + 1)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { throw QEMUFixtureError("baseline read failed: errno \(errno)") }
            buffer += chunk[0..<count]
        }
    }
}

extension String {
    fileprivate func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }
}
