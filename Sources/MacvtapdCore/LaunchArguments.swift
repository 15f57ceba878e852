/// What a VM's QEMU needs so macvtapd can manage its NICs, from the desired state: the monitor
/// reserved for macvtapd and, per NIC, the placeholder hubport and the guest device on it
/// (`macvtapd print qemu-args` and `print libvirt-xml`).
public struct LaunchArguments: Sendable, Equatable {
    public let vm: VMSpec
    /// Each NIC's hub: `hub:` where the config gives one, else `derivedHub`.
    public let hubs: [String: Int]
    /// Each NIC's PCI slot on the root bus when the config places it nowhere (`defaultAddresses`).
    public let addresses: [String: String]

    public init(_ vm: VMSpec) {
        self.vm = vm
        self.hubs = Self.hubs(of: vm)
        self.addresses = Self.defaultAddresses(of: vm)
    }

    /// NICs in id order, so the output is the same on every host and every run.
    public var nics: [NICBinding] { vm.nics.values.sorted { $0.key < $1.key } }

    /// One QEMU argument per element.
    public var arguments: [String] {
        var arguments = ["-qmp", "unix:\(Self.optionValue(vm.qmp)),server=on,wait=off"]
        for nic in nics {
            let id = nic.key.nic
            arguments += ["-netdev", "hubport,id=\(Self.portID(id)),hubid=\(hubs[id]!)"]
            var device = "\(nic.device.model),id=\(id),netdev=\(Self.portID(id))"
            if let mac = nic.mac { device += ",mac=\(mac)" }
            if let bus = nic.device.bus { device += ",bus=\(Self.optionValue(bus))" }
            if let address = nic.device.address ?? addresses[id] { device += ",addr=\(address)" }
            arguments += ["-device", device]
        }
        return arguments
    }

    /// The placeholder hubport's netdev id: the guest device's netdev, never one of macvtapd's
    /// own (those start with `mvtd.`).
    public static func portID(_ nic: String) -> String { nic + ".port" }

    /// The arguments as one line for a POSIX shell (`eval`, or pasting into a launch script).
    public var shellLine: String { arguments.map(Self.shellQuoted).joined(separator: " ") }

    /// One `<qemu:commandline>` element that declares its own namespace, so it can be pasted into
    /// any libvirt domain as it stands.
    public var libvirtXML: String {
        var lines = ["<qemu:commandline xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\">"]
        for argument in arguments { lines.append("  <qemu:arg value=\"\(Self.xmlEscaped(argument))\"/>") }
        lines.append("</qemu:commandline>")
        return lines.joined(separator: "\n")
    }

    /// A NIC without `hub:` gets `1000 + FNV-1a(NIC id) mod 9000`, moving up (and wrapping within
    /// 1000–9999) past hubs the VM's other NICs hold, taken in NIC-id order: the same on every host
    /// and run, and unchanged for the other NICs when one is added (unless their ids collide).
    public static func hubs(of vm: VMSpec) -> [String: Int] {
        var hubs: [String: Int] = [:]
        var taken = Set<Int>()
        for nic in vm.nics.values where nic.hub != nil {
            hubs[nic.key.nic] = nic.hub
            taken.insert(nic.hub!)
        }
        for nic in vm.nics.values.sorted(by: { $0.key < $1.key }) where nic.hub == nil {
            var hub = derivedHub(nic.key.nic)
            while taken.contains(hub) { hub = 1000 + (hub - 1000 + 1) % 9000 }
            hubs[nic.key.nic] = hub
            taken.insert(hub)
        }
        return hubs
    }

    /// A NIC with neither `bus` nor `addr` gets a slot of its own on the root bus (pci.0 on
    /// i440fx, pcie.0 on q35) from 0x1e down to 0x10, NICs in id order, past slots the config
    /// gives other NICs. Left to QEMU, a NIC from the command line takes the first free slot, which
    /// libvirt has already assigned to its own devices: libvirt 9.0 then fails to start the domain
    /// ("PCI: slot 1 function 0 not available for pcie-root-port" on q35, slot 2 for the balloon on
    /// i440fx). libvirt fills slots upward from 1 or 2 and q35 holds 0x1f, so the top is free.
    public static func defaultAddresses(of vm: VMSpec) -> [String: String] {
        let nics = vm.nics.values.sorted { $0.key < $1.key }
        let given = Set(nics.compactMap { $0.device.address.flatMap { NICDevice.pciSlotAndFunction($0)?.slot } })
        var free = (0x10...0x1e).reversed().filter { !given.contains($0) }[...]
        var addresses: [String: String] = [:]
        for nic in nics where nic.device.bus == nil && nic.device.address == nil {
            guard let slot = free.popFirst() else { break }
            addresses[nic.key.nic] = "0x" + String(slot, radix: 16)
        }
        return addresses
    }

    /// `1000 + FNV-1a-32(id) mod 9000`.
    public static func derivedHub(_ nic: String) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in nic.utf8 {
            hash ^= UInt32(byte)
            hash = hash &* 16_777_619
        }
        return 1000 + Int(hash % 9000)
    }

    /// QEMU's option syntax ends a value at a comma; a comma inside one is written twice.
    static func optionValue(_ value: String) -> String {
        value.replacing(",", with: ",,")
    }

    static func shellQuoted(_ word: String) -> String {
        let plain = word.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || "-_./=:,@+%".utf8.contains(byte)
        }
        if plain && !word.isEmpty { return word }
        return "'" + word.replacing("'", with: "'\\''") + "'"
    }

    static func xmlEscaped(_ text: String) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&apos;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
