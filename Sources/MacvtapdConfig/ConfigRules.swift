import MacvtapdCore

/// The checks on names and values that the loader and the JSON schema both enforce.
enum ConfigRules {
    static let supportedVersion = 1
    static let maxNameLength = 64
    /// IFNAMSIZ (16) minus the terminating NUL.
    static let maxInterfaceNameBytes = 15
    /// `sun_path` is 108 bytes including the terminating NUL.
    static let maxSocketPathBytes = 107

    /// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`; nil when valid, else what is wrong.
    static func vmNameProblem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { return "it is empty" }
        guard bytes.count <= maxNameLength else { return "it is longer than \(maxNameLength) characters" }
        guard isAlphanumeric(bytes[0]) else { return "it must start with a letter or digit" }
        guard bytes.allSatisfy({ isAlphanumeric($0) || isPunctuation($0) }) else {
            return "only letters, digits, '_', '.' and '-' are allowed"
        }
        return nil
    }

    /// QEMU's id rule (letter first, then letters, digits, '-', '.', '_'), at most 64 characters.
    static func nicIDProblem(_ id: String) -> String? {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty else { return "it is empty" }
        guard bytes.count <= maxNameLength else { return "it is longer than \(maxNameLength) characters" }
        guard isLetter(bytes[0]) else { return "a QEMU device id must start with a letter" }
        guard bytes.allSatisfy({ isAlphanumeric($0) || isPunctuation($0) }) else {
            return "a QEMU device id holds only letters, digits, '-', '.' and '_'"
        }
        return nil
    }

    /// The kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no '/', ':' or whitespace.
    static func interfaceNameProblem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { return "it is empty" }
        guard bytes.count <= maxInterfaceNameBytes else {
            return "it is \(bytes.count) bytes long; Linux interface names have at most \(maxInterfaceNameBytes)"
        }
        guard name != ".", name != ".." else { return "'.' and '..' are not interface names" }
        let forbidden: Set<UInt8> = [UInt8(ascii: "/"), UInt8(ascii: ":"), 0]
        guard !bytes.contains(where: { forbidden.contains($0) || isSpace($0) }) else {
            return "an interface name cannot contain '/', ':' or whitespace"
        }
        return nil
    }

    /// Six colon-separated hex pairs, unicast, not all-zero.
    static func parseMAC(_ text: String) -> Result<MACAddress, MACProblem> {
        let groups = text.split(separator: ":", omittingEmptySubsequences: false)
        guard groups.count == 6, groups.allSatisfy({ $0.utf8.count == 2 }), let mac = MACAddress(text) else {
            return .failure(.malformed)
        }
        if mac.isZero { return .failure(.zero) }
        if mac.isMulticast { return .failure(.multicast) }
        return .success(mac)
    }

    enum MACProblem: Error {
        case malformed
        case zero
        case multicast

        func message(_ text: String) -> String {
            switch self {
            case .malformed:
                return "'\(text)' is not a MAC address; write six colon-separated hex pairs, like 52:54:00:12:34:56"
            case .zero:
                return "'\(text)' is the all-zero MAC address; a NIC needs a unicast address"
            case .multicast:
                return "'\(text)' is a multicast (group) MAC address (the first byte is odd); "
                    + "a NIC needs a unicast address"
            }
        }
    }

    /// udev property names as udev rules write them: a letter or '_', then letters, digits, '_'.
    static func udevPropertyNameProblem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard let first = bytes.first else { return "it is empty" }
        guard isLetter(first) || first == UInt8(ascii: "_"),
            bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "_") })
        else { return "a udev property name holds only letters, digits and '_' and does not start with a digit" }
        return nil
    }

    /// A value udev can store in its database: one non-empty line without control characters.
    static func udevValueProblem(_ value: String) -> String? {
        guard !value.isEmpty else { return "it is empty" }
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            return "it contains a control character (a newline, a tab, ...)"
        }
        return nil
    }

    /// Where a VM's monitor is when neither the VM nor its file's `defaults` say.
    public static let defaultQMPTemplate = "/run/macvtapd/qmp/{vm}.sock"

    static func deviceWordProblem(_ word: String) -> String? {
        guard !word.isEmpty, word.utf8.count <= 64 else { return "it must be 1 to 64 characters long" }
        let allowed = word.utf8.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
        }
        return allowed ? nil : "only letters, digits, '-', '.' and '_' are allowed"
    }

    static func pciAddressProblem(_ text: String) -> String? {
        guard let parsed = NICDevice.pciSlotAndFunction(text), parsed.slot <= 0x1f, (parsed.function ?? 0) <= 7 else {
            return "write a PCI slot 0x0–0x1f, optionally with a function 0–7, like '0x1e' or '0x1e.0'"
        }
        return nil
    }

    static func qmpPathProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "'\(path)' is not an absolute path; write the full path from '/'" }
        guard !path.utf8.contains(0) else { return "the path contains a NUL byte" }
        guard path.utf8.count <= maxSocketPathBytes else {
            return "the path is \(path.utf8.count) bytes long; a unix socket path has at most \(maxSocketPathBytes)"
        }
        return nil
    }

    private static func isLetter(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        isLetter(byte) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
    }

    private static func isPunctuation(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
    }

    /// The C locale's `isspace`, which the kernel's check uses.
    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (byte >= 0x09 && byte <= 0x0D)
    }
}
