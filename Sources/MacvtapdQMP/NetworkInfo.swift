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
        // Byte by byte over the UTF-8, not by Character: a resync parses every VM's topology, and
        // grapheme breaking and Character comparisons cost more than the rest of the observation.
        var text = text
        let parsed = text.withUTF8 { buffer in
            Result { () throws(NetworkInfoParseError) -> NetworkInfo in try Self.parse(buffer) }
        }
        self = try parsed.get()
    }

    private static func parse(_ text: UnsafeBufferPointer<UInt8>) throws(NetworkInfoParseError) -> NetworkInfo {
        var info = NetworkInfo()
        enum Context {
            case none
            case hub(Int)
            case nic(Int)
        }
        var context = Context.none
        var number = 0
        var start = 0
        while start < text.count {
            var end = start
            while end < text.count, text[end] != UInt8(ascii: "\n") { end += 1 }
            var line = text[start..<end]
            start = end + 1
            if line.isEmpty { continue }
            number += 1
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            func failure(_ reason: String) -> NetworkInfoParseError {
                NetworkInfoParseError(line: number, text: String(decoding: line, as: UTF8.self), reason: reason)
            }
            if line.allSatisfy({ $0 == UInt8(ascii: " ") }) { continue }
            if line.starts(with: [0x20, 0x5C, 0x20]) {  // " \ "
                let body = line.dropFirst(3)
                switch context {
                case .hub(let hubIndex):
                    let hubID = info.hubs[hubIndex].id
                    guard let colon = colonSpace(in: body) else {
                        info.hubs[hubIndex].ports.append(.init(id: string(body), peer: nil))
                        continue
                    }
                    let portID = string(body[..<colon])
                    guard let peer = netClient(body[(colon + 2)...]) else {
                        throw failure("hub port peer is not 'id: index=N,type=T,...'")
                    }
                    info.hubs[hubIndex].ports.append(.init(id: portID, peer: peer))
                    if peer.type == "nic" {
                        info.nics.append(nic(peer, peer: .hubPort(hubID: hubID, portID: portID)))
                    }
                case .nic(let nicIndex):
                    guard let peer = netClient(body) else {
                        throw failure("NIC peer is not 'id: index=N,type=T,...'")
                    }
                    info.nics[nicIndex].peer = .netdev(peer)
                    context = .none
                case .none:
                    throw failure("indented line without a hub or NIC before it")
                }
                continue
            }
            if line.starts(with: Array("hub ".utf8)), let id = integer(line.dropFirst(4)) {
                info.hubs.append(Hub(id: id, ports: []))
                context = .hub(info.hubs.count - 1)
                continue
            }
            guard let client = netClient(line) else {
                throw failure("expected 'hub N' or 'id: index=N,type=T,...'")
            }
            if client.type == "nic" {
                info.nics.append(nic(client, peer: nil))
                context = .nic(info.nics.count - 1)
            } else {
                info.standaloneNetdevs.append(client)
                context = .none
            }
        }
        return info
    }

    private typealias Bytes = Slice<UnsafeBufferPointer<UInt8>>

    private static func string(_ bytes: Bytes) -> String { String(decoding: bytes, as: UTF8.self) }

    /// The index of the first ": ".
    private static func colonSpace(in bytes: Bytes) -> Int? {
        var index = bytes.startIndex
        while index + 1 < bytes.endIndex {
            if bytes[index] == UInt8(ascii: ":") && bytes[index + 1] == UInt8(ascii: " ") { return index }
            index += 1
        }
        return nil
    }

    /// A decimal integer, as `Int(_:)` reads one (an optional sign, then digits only).
    private static func integer(_ bytes: Bytes) -> Int? {
        var rest = bytes[...]
        var negative = false
        if let sign = rest.first, sign == UInt8(ascii: "-") || sign == UInt8(ascii: "+") {
            negative = sign == UInt8(ascii: "-")
            rest = rest.dropFirst()
        }
        guard !rest.isEmpty, rest.count <= 18 else { return nil }
        var value = 0
        for byte in rest {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return negative ? -value : value
    }

    private static func netClient(_ text: Bytes) -> NetClient? {
        guard let colon = colonSpace(in: text) else { return nil }
        let id = text[..<colon]
        var rest = text[(colon + 2)...]
        guard !id.isEmpty, !id.contains(UInt8(ascii: " ")), rest.starts(with: Array("index=".utf8)) else {
            return nil
        }
        rest = rest.dropFirst(6)
        guard let comma = rest.firstIndex(of: UInt8(ascii: ",")), let index = integer(rest[..<comma]) else {
            return nil
        }
        rest = rest[(comma + 1)...]
        guard rest.starts(with: Array("type=".utf8)) else { return nil }
        rest = rest.dropFirst(5)
        let typeEnd = rest.firstIndex(of: UInt8(ascii: ",")) ?? rest.endIndex
        let info = typeEnd < rest.endIndex ? string(rest[(typeEnd + 1)...]) : ""
        return NetClient(id: string(id), type: string(rest[..<typeEnd]), queueIndex: index, info: info)
    }

    private static func nic(_ client: NetClient, peer: NIC.Peer?) -> NIC {
        var model: String?
        var mac: MACAddress?
        for item in client.info.utf8.split(separator: UInt8(ascii: ",")) {
            guard let equals = item.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let key = item[..<equals]
            let value = item[item.index(after: equals)...]
            guard !key.isEmpty, !value.isEmpty else { continue }
            // The last occurrence wins, as in `parameters`.
            if key.elementsEqual("model".utf8) {
                model = String(Substring(value))
            } else if key.elementsEqual("macaddr".utf8) {
                mac = MACAddress(String(Substring(value)))
            }
        }
        return NIC(id: client.id, model: model, mac: mac, peer: peer)
    }
}
