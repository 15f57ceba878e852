import MacvtapdCore

/// A VM as one file declares it, with what the cross-file checks need to point at.
struct VMDeclaration {
    var spec: VMSpec
    /// Where the VM's name is written.
    var location: SourceLocation
    var qmpLocation: SourceLocation?
    var macClaims: [(mac: MACAddress, key: BindingKey, location: SourceLocation)]
}

/// Validates one file's YAML tree against format version 1 and resolves that file's defaults.
///
/// Every problem is recorded and the walk goes on, so one run reports all of them.
struct ConfigDecoder {
    let file: String
    private(set) var diagnostics: [Diagnostic] = []

    init(file: String) {
        self.file = file
    }

    static let topLevelKeys = ["version", "defaults", "vms"]
    static let defaultsKeys = ["mode", "link", "announce", "qmp"]
    static let vmKeys = ["qmp", "nics"]
    static let nicKeys = ["host", "mode", "mac", "hub", "link", "announce", "model", "bus", "addr"]
    static let hostKeys = ["name", "mac", "path", "property"]

    private struct Defaults {
        var mode = MacvtapMode.bridge
        var link = LinkPolicy.follow
        var announce = true
        /// Where a VM without `qmp:` has its monitor; `{vm}` stands for the VM's name.
        var qmp = ConfigRules.defaultQMPTemplate
        var qmpLocation: SourceLocation?
    }

    mutating func decode(_ root: YAMLNode?) -> [VMDeclaration] {
        guard let root, !isNull(root) else {
            error(
                "the file is empty; a configuration file is a mapping that starts with 'version: 1' and declares 'vms'",
                at: root.map(location) ?? SourceLocation(file: file, line: 1, column: 1))
            return []
        }
        guard let entries = mapping(root, of: "the configuration file", allowed: Self.topLevelKeys) else { return [] }

        if let version = entries["version"] {
            checkVersion(version.value)
        } else {
            error(
                "missing 'version'; every configuration file declares 'version: \(ConfigRules.supportedVersion)'",
                at: location(root))
        }
        var defaults = Defaults()
        if let node = entries["defaults"],
            let fields = mapping(node.value, of: "'defaults'", allowed: Self.defaultsKeys)
        {
            defaults.mode = fields["mode"].flatMap { enumValue($0.value, MacvtapMode.self, field: "mode") } ?? .bridge
            defaults.link = fields["link"].flatMap { enumValue($0.value, LinkPolicy.self, field: "link") } ?? .follow
            defaults.announce = fields["announce"].flatMap { boolean($0.value, field: "announce") } ?? true
            if let node = fields["qmp"], let template = string(node.value, field: "qmp") {
                if template.hasPrefix("/") {
                    defaults.qmp = template
                    defaults.qmpLocation = location(node.value)
                } else {
                    error(
                        "invalid 'qmp' in 'defaults': '\(template)' is not an absolute path; write the full path "
                            + "from '/', with {vm} where the VM's name goes (like \(ConfigRules.defaultQMPTemplate))",
                        at: location(node.value))
                }
            }
        }
        guard let vmsEntry = entries["vms"] else {
            error("missing 'vms', the mapping of VM name to VM (write 'vms: {}' to declare none)", at: location(root))
            return []
        }
        guard let vms = mapping(vmsEntry.value, of: "'vms'", allowed: nil) else { return [] }
        return vms.ordered.map { decodeVM(name: $0.name, key: $0.key, value: $0.value, defaults: defaults) }
    }

    private mutating func checkVersion(_ node: YAMLNode) {
        guard let scalar = node.scalar, case .int(let version) = YAMLScalarType(scalar) else {
            error(
                "'version' must be the integer \(ConfigRules.supportedVersion), found \(node.kindDescription)",
                at: location(node))
            return
        }
        if version != ConfigRules.supportedVersion {
            error(
                "unsupported version \(scalar.value); this macvtapd reads version \(ConfigRules.supportedVersion)",
                at: location(node))
        }
    }

    private mutating func decodeVM(name: String, key: YAMLNode, value: YAMLNode, defaults: Defaults) -> VMDeclaration {
        if let problem = ConfigRules.vmNameProblem(name) {
            error(
                "invalid VM name '\(name)': \(problem) (a VM name matches [A-Za-z0-9][A-Za-z0-9_.-]{0,63})",
                at: location(key))
        }
        let vmLocation = location(key)
        var declaration = VMDeclaration(
            spec: VMSpec(name: name, qmp: "", nics: [:], source: vmLocation), location: vmLocation,
            qmpLocation: nil, macClaims: [])
        guard let fields = mapping(value, of: "VM '\(name)'", allowed: Self.vmKeys) else { return declaration }

        if let qmp = fields["qmp"] {
            declaration.qmpLocation = location(qmp.value)
            if let path = string(qmp.value, field: "qmp") {
                if let problem = ConfigRules.qmpPathProblem(path) {
                    error("invalid 'qmp' of VM '\(name)': \(problem)", at: location(qmp.value))
                } else {
                    declaration.spec.qmp = path
                }
            }
        } else {
            // The file's template (or the built-in one), so a VM manager can derive the path too.
            let path = defaults.qmp.replacing("{vm}", with: name)
            declaration.qmpLocation = defaults.qmpLocation ?? vmLocation
            if let problem = ConfigRules.qmpPathProblem(path) {
                error(
                    "VM '\(name)' has no 'qmp', and the default '\(defaults.qmp)' gives an invalid path: \(problem)",
                    at: defaults.qmpLocation ?? vmLocation)
            } else {
                declaration.spec.qmp = path
            }
        }

        guard let nicsEntry = fields["nics"] else {
            error(
                "VM '\(name)' has no 'nics': the mapping of QEMU NIC device id to host interface",
                at: vmLocation)
            return declaration
        }
        guard let nics = mapping(nicsEntry.value, of: "'nics' of VM '\(name)'", allowed: nil) else {
            return declaration
        }
        var hubs: [Int: (nic: String, location: SourceLocation)] = [:]
        for nic in nics.ordered {
            let bindingKey = BindingKey(vm: name, nic: nic.name)
            guard
                let (binding, macLocation, hubLocation) = decodeNIC(
                    bindingKey, key: nic.key, value: nic.value,
                    defaults: defaults)
            else { continue }
            if let mac = binding.mac, let macLocation {
                declaration.macClaims.append((mac, bindingKey, macLocation))
            }
            if let hub = binding.hub, let hubLocation {
                if let first = hubs[hub] {
                    error(
                        "hub \(hub) is already used by NIC '\(first.nic)' of VM '\(name)' at "
                            + "\(first.location.line):\(first.location.column); each NIC needs its own hub",
                        at: hubLocation)
                } else {
                    hubs[hub] = (nic.name, hubLocation)
                }
            }
            declaration.spec.nics[nic.name] = binding
        }
        return declaration
    }

    private mutating func decodeNIC(
        _ bindingKey: BindingKey, key: YAMLNode, value: YAMLNode, defaults: Defaults
    ) -> (NICBinding, macLocation: SourceLocation?, hubLocation: SourceLocation?)? {
        let errorsBefore = diagnostics.count
        if let problem = ConfigRules.nicIDProblem(bindingKey.nic) {
            error("invalid NIC id '\(bindingKey.nic)' in VM '\(bindingKey.vm)': \(problem)", at: location(key))
        }
        let what = "NIC '\(bindingKey.nic)' of VM '\(bindingKey.vm)'"
        guard let fields = mapping(value, of: what, allowed: Self.nicKeys) else { return nil }

        var host: HostMatcher?
        if let node = fields["host"] {
            host = hostMatcher(node.value, of: what)
        } else {
            error(
                "\(what) has no 'host': the host interface, by name ('host: eth0'), MAC ('host: {mac: ...}'), "
                    + "udev path ('host: {path: pci-0000:03:00.0}') or udev properties ('host: {property: {...}}')",
                at: location(key))
        }
        let mode = fields["mode"].map { enumValue($0.value, MacvtapMode.self, field: "mode") } ?? defaults.mode
        let link = fields["link"].map { enumValue($0.value, LinkPolicy.self, field: "link") } ?? defaults.link
        // `mac: guest` follows the guest-programmed MAC; any other value is the macvtap's MAC.
        let followsGuestMAC = fields["mac"].map { $0.value.scalar?.value == "guest" && isString($0.value) } ?? false
        let mac =
            followsGuestMAC
            ? nil
            : fields["mac"].flatMap {
                macAddress($0.value, field: "mac", malformedHint: ", or 'guest' to follow the MAC the guest sets")
            }
        let hub = fields["hub"].flatMap { hubID($0.value) }
        let announce = fields["announce"].map { boolean($0.value, field: "announce") } ?? defaults.announce
        var device = NICDevice()
        if let node = fields["model"], let model = deviceWord(node.value, field: "model", example: "e1000e") {
            device.model = model
        }
        if let node = fields["bus"] { device.bus = deviceWord(node.value, field: "bus", example: "pcie.0") }
        if let node = fields["addr"] { device.address = pciAddress(node.value) }

        guard diagnostics.count == errorsBefore, let host, let mode, let link, let announce else { return nil }
        let binding = NICBinding(
            key: bindingKey, host: host, mode: mode, mac: mac, hub: hub, link: link, announce: announce,
            followsGuestMAC: followsGuestMAC, source: location(key), device: device)
        return (binding, fields["mac"].map { location($0.value) }, fields["hub"].map { location($0.value) })
    }

    private mutating func hostMatcher(_ node: YAMLNode, of what: String) -> HostMatcher? {
        if case .scalar = node.content {
            guard let name = string(node, field: "host") else { return nil }
            return interfaceName(name, at: node)
        }
        guard let fields = mapping(node, of: "'host' of \(what)", allowed: Self.hostKeys) else { return nil }
        let given = fields.ordered.map(\.name)
        let choices = "give exactly one of " + Self.hostKeys.joined(separator: ", ")
        guard given.count == 1, let (field, _, value) = fields.ordered.first else {
            if given.isEmpty {
                // Unknown keys were reported already; an empty mapping was not.
                guard case .mapping(let pairs) = node.content, pairs.isEmpty else { return nil }
                error("'host' of \(what) has none of name, mac, path, property; \(choices)", at: location(node))
            } else {
                let listed = given.map { "'\($0)'" }.joined(separator: " and ")
                error("'host' of \(what) has \(listed); \(choices)", at: location(node))
            }
            return nil
        }
        switch field {
        case "name": return string(value, field: "name").flatMap { interfaceName($0, at: value) }
        case "mac": return macAddress(value, field: "mac").map { .mac($0) }
        case "path": return udevPath(value)
        default: return udevProperties(value, of: what)
        }
    }

    private mutating func udevPath(_ node: YAMLNode) -> HostMatcher? {
        guard let path = string(node, field: "path") else { return nil }
        if let problem = ConfigRules.udevValueProblem(path) {
            error(
                "invalid 'path' '\(path)': \(problem); write udev's ID_PATH, like pci-0000:03:00.0", at: location(node))
            return nil
        }
        return .path(path)
    }

    private mutating func udevProperties(_ node: YAMLNode, of what: String) -> HostMatcher? {
        let errorsBefore = diagnostics.count
        guard let entries = mapping(node, of: "'property' of 'host' of \(what)", allowed: nil) else { return nil }
        guard !entries.ordered.isEmpty else {
            error(
                "'property' of 'host' of \(what) is empty; give one or more udev properties, like "
                    + "'{ID_NET_NAME_PATH: enp3s0}'", at: location(node))
            return nil
        }
        var pairs: [String: String] = [:]
        for (name, key, value) in entries.ordered {
            if let problem = ConfigRules.udevPropertyNameProblem(name) {
                error("invalid udev property name '\(name)': \(problem)", at: location(key))
                continue
            }
            guard let text = string(value, field: name) else { continue }
            if let problem = ConfigRules.udevValueProblem(text) {
                error("invalid value '\(text)' of udev property '\(name)': \(problem)", at: location(value))
                continue
            }
            pairs[name] = text
        }
        return diagnostics.count == errorsBefore ? .property(pairs) : nil
    }

    private mutating func interfaceName(_ name: String, at node: YAMLNode) -> HostMatcher? {
        if let problem = ConfigRules.interfaceNameProblem(name) {
            error("invalid host interface name '\(name)': \(problem)", at: location(node))
            return nil
        }
        return .name(name)
    }

    private mutating func macAddress(_ node: YAMLNode, field: String, malformedHint: String = "") -> MACAddress? {
        guard let text = string(node, field: field) else { return nil }
        switch ConfigRules.parseMAC(text) {
        case .success(let mac): return mac
        case .failure(let problem):
            let hint = problem == .malformed ? malformedHint : ""
            error("invalid '\(field)': \(problem.message(text))\(hint)", at: location(node))
            return nil
        }
    }

    /// A QEMU device model or bus id: letters, digits, '-', '.', '_' (nothing QEMU's option
    /// syntax would split on).
    private mutating func deviceWord(_ node: YAMLNode, field: String, example: String) -> String? {
        guard let text = string(node, field: field) else { return nil }
        if let problem = ConfigRules.deviceWordProblem(text) {
            error("invalid '\(field)' '\(text)': \(problem) (like '\(example)')", at: location(node))
            return nil
        }
        return text
    }

    /// QEMU's PCI `addr=`: a slot (0–0x1f) and an optional function (0–7), hex, as `"0x1e"` or
    /// `"1e.2"`; a string, because YAML reads an unquoted 0x1e as the number 30.
    private mutating func pciAddress(_ node: YAMLNode) -> String? {
        guard let text = string(node, field: "addr", expecting: "a quoted PCI slot like \"0x1e\" or \"0x1e.0\"")
        else { return nil }
        if let problem = ConfigRules.pciAddressProblem(text) {
            error("invalid 'addr' '\(text)': \(problem)", at: location(node))
            return nil
        }
        return text
    }

    private mutating func hubID(_ node: YAMLNode) -> Int? {
        guard let scalar = node.scalar, case .int(let value) = YAMLScalarType(scalar) else {
            error(
                "'hub' must be a non-negative integer (a QEMU hub id, like 'hub: 10'), found \(node.kindDescription)",
                at: location(node))
            return nil
        }
        guard let value, value >= 0, value <= Int(Int32.max) else {
            error("'hub' must be between 0 and \(Int32.max), found \(scalar.value)", at: location(node))
            return nil
        }
        return value
    }

    private mutating func enumValue<Value: RawRepresentable & CaseIterable>(
        _ node: YAMLNode, _ type: Value.Type, field: String
    ) -> Value? where Value.RawValue == String {
        let allowed = Value.allCases.map(\.rawValue)
        let list = allowed.joined(separator: ", ")
        guard let text = string(node, field: field, expecting: "one of \(list)") else { return nil }
        guard let value = Value(rawValue: text) else {
            error(
                "invalid '\(field)' '\(text)'; allowed: \(list)\(Suggestion.hint(for: text, among: allowed))",
                at: location(node))
            return nil
        }
        return value
    }

    /// A YAML 1.2 core-schema boolean: `true`/`false` (any of their three spellings), not `yes`/`on`.
    private mutating func boolean(_ node: YAMLNode, field: String) -> Bool? {
        guard let scalar = node.scalar, YAMLScalarType(scalar) == .bool else {
            var message = "'\(field)' must be true or false, found \(node.kindDescription)"
            if let scalar = node.scalar, ["yes", "no", "on", "off"].contains(scalar.value.lowercased()) {
                message += " (YAML 1.2 reads '\(scalar.value)' as a string; write true or false)"
            }
            error(message, at: location(node))
            return nil
        }
        return scalar.value.lowercased() == "true"
    }

    /// A scalar that the core schema reads as a string.
    private mutating func string(_ node: YAMLNode, field: String, expecting: String = "a string") -> String? {
        guard let scalar = node.scalar, YAMLScalarType(scalar) == .string else {
            var message = "'\(field)' must be \(expecting), found \(node.kindDescription)"
            if let scalar = node.scalar, YAMLScalarType(scalar) != .null {
                message += " (quote it to make it a string)"
            }
            error(message, at: location(node))
            return nil
        }
        return scalar.value
    }

    private func isString(_ node: YAMLNode) -> Bool {
        node.scalar.map { YAMLScalarType($0) == .string } ?? false
    }

    private func isNull(_ node: YAMLNode) -> Bool {
        node.scalar.map { YAMLScalarType($0) == .null } ?? false
    }

    // MARK: Mappings

    /// A mapping's entries by key, in document order, duplicates and malformed keys reported.
    struct Entries {
        var ordered: [(name: String, key: YAMLNode, value: YAMLNode)] = []
        var byName: [String: (key: YAMLNode, value: YAMLNode)] = [:]

        subscript(_ name: String) -> (key: YAMLNode, value: YAMLNode)? { byName[name] }
    }

    /// The entries of `node` as the mapping `what`; nil (with an error) when it is not a mapping.
    /// `allowed` nil means any key (names chosen by the user, such as VM names).
    private mutating func mapping(_ node: YAMLNode, of what: String, allowed: [String]?) -> Entries? {
        guard case .mapping(let pairs) = node.content else {
            let expected = allowed.map { "a mapping with keys " + $0.joined(separator: ", ") } ?? "a mapping"
            error("\(what) must be \(expected), found \(node.kindDescription)", at: location(node))
            return nil
        }
        var entries = Entries()
        for pair in pairs {
            guard let scalar = pair.key.scalar else {
                error(
                    "a key in \(what) must be a plain name, found \(pair.key.kindDescription)", at: location(pair.key))
                continue
            }
            let name = scalar.value
            if let first = entries.byName[name] {
                error(
                    "duplicate key '\(name)' in \(what); it is first defined at \(first.key.line):\(first.key.column)",
                    at: location(pair.key))
                continue
            }
            if let allowed, !allowed.contains(name) {
                let hint =
                    name == "<<"
                    ? "; merge keys ('<<') are not supported, write the keys out"
                    : Suggestion.hint(for: name, among: allowed)
                error(
                    "unknown key '\(name)' in \(what)\(hint) (allowed: \(allowed.joined(separator: ", ")))",
                    at: location(pair.key))
                continue
            }
            entries.byName[name] = (pair.key, pair.value)
            entries.ordered.append((name, pair.key, pair.value))
        }
        return entries
    }

    // MARK: Diagnostics

    private func location(_ node: YAMLNode) -> SourceLocation {
        SourceLocation(file: file, line: node.line, column: node.column)
    }

    private mutating func error(_ message: String, at location: SourceLocation) {
        diagnostics.append(Diagnostic(message, at: location))
    }
}
