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
    /// Every problem found so far; the field readers (ConfigDecoder+Fields.swift) append to it.
    var diagnostics: [Diagnostic] = []

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
}
