import MacvtapdCore

/// The network topology QEMU prints for `info network`: hubs and their ports, NICs and their
/// peers, and netdevs that are neither on a hub nor behind a NIC. The only QMP-reachable view of
/// which backend sits on which hub (QEMU 7.2 has no structured query for it).
public struct NetworkInfo: Hashable, Sendable {
    public var hubs: [Hub]
    /// Every NIC, whether it hangs off a hub port, a netdev, or nothing.
    public var nics: [NIC]
    /// Netdevs with no peer (printed at top level, not under a hub or a NIC).
    public var standaloneNetdevs: [NetClient]

    public init(hubs: [Hub] = [], nics: [NIC] = [], standaloneNetdevs: [NetClient] = []) {
        self.hubs = hubs
        self.nics = nics
        self.standaloneNetdevs = standaloneNetdevs
    }

    /// One line of QEMU's `print_net_client`: `id: index=N,type=T,<type-specific info>`.
    public struct NetClient: Hashable, Sendable {
        public var id: String
        /// `tap`, `socket`, `nic`, `user`, ...
        public var type: String
        public var queueIndex: Int
        /// The type-specific rest, e.g. `fd=12` or `socket: udp=127.0.0.1:40001`.
        public var info: String

        public init(id: String, type: String, queueIndex: Int = 0, info: String) {
            self.id = id
            self.type = type
            self.queueIndex = queueIndex
            self.info = info
        }

        /// `key=value` pairs of `info` (`fd`, `ifname`, `model`, `macaddr`, ...).
        public var parameters: [String: String] {
            var result: [String: String] = [:]
            for item in info.split(separator: ",") {
                let pair = item.split(separator: "=", maxSplits: 1)
                if pair.count == 2 { result[String(pair[0])] = String(pair[1]) }
            }
            return result
        }
    }

    public struct Hub: Hashable, Sendable {
        public var id: Int
        public var ports: [Port]

        public init(id: Int, ports: [Port]) {
            self.id = id
            self.ports = ports
        }

        public struct Port: Hashable, Sendable {
            /// The hubport netdev's id, e.g. `nic0.port`.
            public var id: String
            /// What the port is connected to: a NIC, a tap, a socket, ... or nothing.
            public var peer: NetClient?

            public init(id: String, peer: NetClient?) {
                self.id = id
                self.peer = peer
            }
        }

        public func port(_ id: String) -> Port? { ports.first { $0.id == id } }
        /// Ports whose peer is not a NIC: the backends attached to this hub.
        public var backendPorts: [Port] { ports.filter { $0.peer != nil && $0.peer?.type != "nic" } }
    }

    public struct NIC: Hashable, Sendable {
        public enum Peer: Hashable, Sendable {
            case hubPort(hubID: Int, portID: String)
            case netdev(NetClient)
        }

        public var id: String
        public var model: String?
        public var mac: MACAddress?
        public var peer: Peer?

        public init(id: String, model: String?, mac: MACAddress?, peer: Peer?) {
            self.id = id
            self.model = model
            self.mac = mac
            self.peer = peer
        }
    }

    public func hub(_ id: Int) -> Hub? { hubs.first { $0.id == id } }

    /// Every netdev id QEMU lists: hub ports, the netdevs behind them, and standalone netdevs.
    public var netdevIDs: [String] {
        hubs.flatMap { $0.ports.flatMap { [$0.id] + ($0.peer.map { [$0.id] } ?? []) } } + standaloneNetdevs.map(\.id)
    }
    public func nic(_ id: String) -> NIC? { nics.first { $0.id == id } }

    /// The hub a NIC's placeholder port sits on.
    public func hubID(ofNIC id: String) -> Int? {
        if case .hubPort(let hubID, _) = nic(id)?.peer { return hubID }
        return nil
    }
}

/// A line of `info network` that does not have the shape QEMU 7.2 prints.
public struct NetworkInfoParseError: Error, Hashable, Sendable, CustomStringConvertible {
    public let line: Int
    public let text: String
    public let reason: String
    public var description: String { "info network line \(line): \(reason): \(text)" }
}

extension NetworkInfo {
    /// Parses QEMU's `info network` text (net/net.c `hmp_info_network`, net/hub.c `net_hub_info`):
    ///
    ///     hub 10
    ///      \ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56
    ///      \ P1: T1: index=0,type=tap,fd=12
    ///      \ orphan
    ///     nic3: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:03
    ///      \ direct: index=0,type=tap,ifname=tap1,script=no,downscript=no
    ///     lone: index=0,type=socket,socket: udp=127.0.0.1:40003
    ///
    /// Indented ` \ ` lines belong to the preceding hub (its ports) or the preceding NIC (its peer).
    /// QEMU ids cannot contain ':' or spaces, which makes the `id: ` prefixes unambiguous.
    public init(parsing text: String) throws(NetworkInfoParseError) {
        self.init()
        enum Context {
            case none
            case hub(Int)
            case nic(Int)
        }
        var context = Context.none
        let lines = text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (offset, rawLine) in lines.enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine[...]
            let number = offset + 1
            func failure(_ reason: String) -> NetworkInfoParseError {
                NetworkInfoParseError(line: number, text: String(line), reason: reason)
            }
            if line.trimmingPrefix(" ").isEmpty { continue }
            if line.hasPrefix(" \\ ") {
                let body = line.dropFirst(3)
                switch context {
                case .hub(let hubIndex):
                    let hubID = hubs[hubIndex].id
                    guard let colon = body.firstRange(of: ": ") else {
                        hubs[hubIndex].ports.append(.init(id: String(body), peer: nil))
                        continue
                    }
                    let portID = String(body[..<colon.lowerBound])
                    guard let peer = Self.netClient(body[colon.upperBound...]) else {
                        throw failure("hub port peer is not 'id: index=N,type=T,...'")
                    }
                    hubs[hubIndex].ports.append(.init(id: portID, peer: peer))
                    if peer.type == "nic" {
                        nics.append(Self.nic(peer, peer: .hubPort(hubID: hubID, portID: portID)))
                    }
                case .nic(let nicIndex):
                    guard let peer = Self.netClient(body) else {
                        throw failure("NIC peer is not 'id: index=N,type=T,...'")
                    }
                    nics[nicIndex].peer = .netdev(peer)
                    context = .none
                case .none:
                    throw failure("indented line without a hub or NIC before it")
                }
                continue
            }
            if line.hasPrefix("hub "), let id = Int(line.dropFirst(4)) {
                hubs.append(Hub(id: id, ports: []))
                context = .hub(hubs.count - 1)
                continue
            }
            guard let client = Self.netClient(line) else {
                throw failure("expected 'hub N' or 'id: index=N,type=T,...'")
            }
            if client.type == "nic" {
                nics.append(Self.nic(client, peer: nil))
                context = .nic(nics.count - 1)
            } else {
                standaloneNetdevs.append(client)
                context = .none
            }
        }
    }

    private static func netClient(_ text: Substring) -> NetClient? {
        guard let colon = text.firstRange(of: ": ") else { return nil }
        let id = String(text[..<colon.lowerBound])
        var rest = text[colon.upperBound...]
        guard !id.isEmpty, !id.contains(" "), rest.hasPrefix("index=") else { return nil }
        rest = rest.dropFirst("index=".count)
        guard let comma = rest.firstIndex(of: ","), let index = Int(rest[..<comma]) else { return nil }
        rest = rest[rest.index(after: comma)...]
        guard rest.hasPrefix("type=") else { return nil }
        rest = rest.dropFirst("type=".count)
        let typeEnd = rest.firstIndex(of: ",") ?? rest.endIndex
        let type = String(rest[..<typeEnd])
        let info = typeEnd < rest.endIndex ? String(rest[rest.index(after: typeEnd)...]) : ""
        return NetClient(id: id, type: type, queueIndex: index, info: info)
    }

    private static func nic(_ client: NetClient, peer: NIC.Peer?) -> NIC {
        let parameters = client.parameters
        return NIC(
            id: client.id, model: parameters["model"], mac: parameters["macaddr"].flatMap { MACAddress($0) }, peer: peer
        )
    }
}
