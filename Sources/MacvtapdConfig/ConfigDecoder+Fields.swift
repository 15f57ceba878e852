import MacvtapdCore

/// The decoder's field readers: host matchers, scalars, mappings with their key checks, and the
/// diagnostics they record. Each reports its own problem at the node and returns nil, so the walk
/// in ConfigDecoder.swift goes on to the next field.
extension ConfigDecoder {
    mutating func hostMatcher(_ node: YAMLNode, of what: String) -> HostMatcher? {
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

    mutating func udevPath(_ node: YAMLNode) -> HostMatcher? {
        guard let path = string(node, field: "path") else { return nil }
        if let problem = ConfigRules.udevValueProblem(path) {
            error(
                "invalid 'path' '\(path)': \(problem); write udev's ID_PATH, like pci-0000:03:00.0", at: location(node))
            return nil
        }
        return .path(path)
    }

    mutating func udevProperties(_ node: YAMLNode, of what: String) -> HostMatcher? {
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

    mutating func interfaceName(_ name: String, at node: YAMLNode) -> HostMatcher? {
        if let problem = ConfigRules.interfaceNameProblem(name) {
            error("invalid host interface name '\(name)': \(problem)", at: location(node))
            return nil
        }
        return .name(name)
    }

    mutating func macAddress(_ node: YAMLNode, field: String, malformedHint: String = "") -> MACAddress? {
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
    mutating func deviceWord(_ node: YAMLNode, field: String, example: String) -> String? {
        guard let text = string(node, field: field) else { return nil }
        if let problem = ConfigRules.deviceWordProblem(text) {
            error("invalid '\(field)' '\(text)': \(problem) (like '\(example)')", at: location(node))
            return nil
        }
        return text
    }

    /// QEMU's PCI `addr=`: a slot (0–0x1f) and an optional function (0–7), hex, as `"0x1e"` or
    /// `"1e.2"`; a string, because YAML reads an unquoted 0x1e as the number 30.
    mutating func pciAddress(_ node: YAMLNode) -> String? {
        guard let text = string(node, field: "addr", expecting: "a quoted PCI slot like \"0x1e\" or \"0x1e.0\"")
        else { return nil }
        if let problem = ConfigRules.pciAddressProblem(text) {
            error("invalid 'addr' '\(text)': \(problem)", at: location(node))
            return nil
        }
        return text
    }

    mutating func hubID(_ node: YAMLNode) -> Int? {
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

    mutating func enumValue<Value: RawRepresentable & CaseIterable>(
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
    mutating func boolean(_ node: YAMLNode, field: String) -> Bool? {
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
    mutating func string(_ node: YAMLNode, field: String, expecting: String = "a string") -> String? {
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

    func isString(_ node: YAMLNode) -> Bool {
        node.scalar.map { YAMLScalarType($0) == .string } ?? false
    }

    func isNull(_ node: YAMLNode) -> Bool {
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
    mutating func mapping(_ node: YAMLNode, of what: String, allowed: [String]?) -> Entries? {
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

    func location(_ node: YAMLNode) -> SourceLocation {
        SourceLocation(file: file, line: node.line, column: node.column)
    }

    mutating func error(_ message: String, at location: SourceLocation) {
        diagnostics.append(Diagnostic(message, at: location))
    }
}
