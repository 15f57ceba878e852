/// The marks that say "macvtapd owns this", and the deterministic names derived from a binding.
///
/// Everything macvtapd creates is named from its `BindingKey`, so a restarted daemon finds and
/// adopts what is already there instead of creating a duplicate, and anything without the mark is
/// never touched.
public enum Ownership {
    /// Prefix of the IFLA_IFALIAS of every macvtap macvtapd creates: `macvtapd:web1/nic0`.
    public static let aliasPrefix = "macvtapd:"
    /// Prefix of every QEMU netdev id (and getfd name) macvtapd adds.
    public static let qemuPrefix = "mvtd"

    public static func alias(for key: BindingKey) -> String { aliasPrefix + key.description }

    /// The binding an interface alias names, or nil when the interface is not ours.
    public static func binding(fromAlias alias: String?) -> BindingKey? {
        guard let alias, alias.hasPrefix(aliasPrefix) else { return nil }
        let rest = alias.dropFirst(aliasPrefix.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let vm = String(rest[..<slash])
        let nic = String(rest[rest.index(after: slash)...])
        guard !vm.isEmpty, !nic.isEmpty, !nic.contains("/") else { return nil }
        return BindingKey(vm: vm, nic: nic)
    }

    /// `mvt` + 12 hex digits of a stable 48-bit hash of the key: 15 bytes, IFNAMSIZ-safe, the same
    /// on every run and every machine.
    public static func macvtapName(for key: BindingKey) -> String {
        let hash = fnv1a64(key.description) & 0xFFFF_FFFF_FFFF
        let hex = String(hash, radix: 16)
        return "mvt" + String(repeating: "0", count: 12 - hex.count) + hex
    }

    /// QEMU ids of one attached backend. The macvtap's ifindex is part of the ids so that a backend
    /// whose macvtap was deleted or replaced is recognisable from observed state alone.
    public struct BackendIDs: Hashable, Sendable, Codable {
        public var nic: String
        public var ifindex: Int32
        /// How the ids are spelt. New backends get the short spelling; a backend added by an older
        /// macvtapd keeps the long one, and is recognised, adopted and detached by its own ids.
        public var spelling: Spelling

        public init(nic: String, ifindex: Int32, spelling: Spelling = .short) {
            self.nic = nic
            self.ifindex = ifindex
            self.spelling = spelling
        }

        /// `mvtd.nic0.t42` (long: `mvtd.nic0.tap42`): the tap netdev holding the macvtap fd.
        public var tap: String { "\(qemuPrefix).\(nic).\(spelling.tap)\(ifindex)" }
        /// `mvtd.nic0.p42` (long: `mvtd.nic0.port42`): the hubport joining that tap to the NIC's hub.
        public var port: String { "\(qemuPrefix).\(nic).\(spelling.port)\(ifindex)" }
        /// `mvtd.nic0`: the getfd name; one per NIC, a later getfd replaces an earlier one.
        public var fdName: String { Ownership.fdName(nic: nic) }
    }

    /// The word before the ifindex in a backend's netdev ids. QEMU reads its monitor a byte per
    /// main-loop pass and an attach names the tap twice and the port once: the short words save
    /// 7 bytes an attach. Releases before it wrote the long words.
    public enum Spelling: String, Hashable, Sendable, Codable, CaseIterable {
        case short
        case long

        var tap: String { self == .short ? "t" : "tap" }
        var port: String { self == .short ? "p" : "port" }
    }

    /// `mvtd.<nic>` (releases before the short spelling used `mvtd.<nic>.fd`): getfd names are a
    /// namespace of their own, apart from netdev ids, and nothing parses them.
    public static func fdName(nic: String) -> String { "\(qemuPrefix).\(nic)" }

    /// What a QEMU netdev id says about itself, when it is one of ours.
    public enum BackendPart: Hashable, Sendable {
        case tap
        case port
    }

    /// Parses `mvtd.<nic>.t<ifindex>` / `mvtd.<nic>.p<ifindex>`, and the long spelling
    /// `mvtd.<nic>.tap<ifindex>` / `mvtd.<nic>.port<ifindex>`; nil for ids we do not own.
    public static func parseBackendID(_ id: String) -> (ids: BackendIDs, part: BackendPart)? {
        let prefix = qemuPrefix + "."
        guard id.hasPrefix(prefix), let lastDot = id.lastIndex(of: ".") else { return nil }
        let nicStart = id.index(id.startIndex, offsetBy: prefix.count)
        // `mvtd.x`: the only dot is the prefix's, there is no NIC part.
        guard nicStart <= lastDot else { return nil }
        let nic = String(id[nicStart..<lastDot])
        let suffix = id[id.index(after: lastDot)...]
        guard !nic.isEmpty else { return nil }
        for spelling in Spelling.allCases {
            for (word, part) in [(spelling.tap, BackendPart.tap), (spelling.port, .port)] where suffix.hasPrefix(word) {
                let digits = suffix.dropFirst(word.count)
                guard let ifindex = Int32(digits), ifindex > 0 else { continue }
                let ids = BackendIDs(nic: nic, ifindex: ifindex, spelling: spelling)
                // Only the exact spelling we write (no sign, no leading zero): the ids are used as
                // written to detach the backend.
                guard (part == .tap ? ids.tap : ids.port) == id else { continue }
                return (ids, part)
            }
        }
        return nil
    }

    private static func fnv1a64(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}
