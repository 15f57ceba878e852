import MacvtapdCore

/// A guest NIC placed as macvtapd places managed NICs: a virtio-net-pci device whose peer is the
/// hubport `<id>.port` on hub `hub`, so a test can attach backends or probes to that hub.
public struct GuestNIC: Hashable, Sendable {
    /// The QEMU device id (`set_link name=` takes it).
    public var id: String
    public var hub: Int
    public var mac: MACAddress

    public init(id: String, hub: Int, mac: MACAddress) {
        self.id = id
        self.hub = hub
        self.mac = mac
    }

    /// The hubport netdev that is the NIC's peer.
    public var portID: String { id + ".port" }

    var qemuArguments: [String] {
        [
            "-netdev", "hubport,id=\(portID),hubid=\(hub)",
            "-device", "virtio-net-pci,id=\(id),netdev=\(portID),mac=\(mac)",
        ]
    }
}

/// An active-backup bond the guest builds from its NICs before bringing them up.
public struct GuestBond: Hashable, Sendable {
    public var name: String
    /// Guest interface names; the first becomes the initial active slave.
    public var slaves: [String]
    public var miimon: Duration
    /// The slave the bond returns to whenever it is available (bonding's `primary`).
    public var primary: String?

    public init(name: String, slaves: [String], miimon: Duration = .milliseconds(100), primary: String? = nil) {
        self.name = name
        self.slaves = slaves
        self.miimon = miimon
        self.primary = primary
    }
}

/// What to boot: the NICs on their hubs and what the guest's /init should configure.
public struct GuestConfiguration: Sendable {
    /// In PCI order, so the guest names them eth0, eth1, ... in this order.
    public var nics: [GuestNIC]
    /// Guest interface name -> address with prefix, e.g. `["eth0": "10.99.0.2/24"]`.
    public var addresses: [String: String] = [:]
    public var bonds: [GuestBond] = []
    /// The guest pings this address for as long as it runs and reports each reply.
    public var pingTarget: String?
    public var pingInterval: Duration = .seconds(1)
    /// How often the guest polls carrier and bond state.
    public var pollInterval: Duration = .milliseconds(20)
    /// After `GUEST READY`, one after the other: the guest waits `after`, then sets `interface`'s
    /// MAC to `mac` and says `GUEST SETMAC <interface> mac=<mac>`.
    public var macChanges: [(interface: String, mac: MACAddress, after: Duration)] = []
    /// After `GUEST READY` the guest prints `GUEST BEAT <n>` this often: its own liveness, read
    /// from the host side by `ConsoleHeartbeat` (e.g. its silence across a migration's handover).
    public var heartbeat: Duration?
    /// The guest powers off when the ACPI power button is pressed (`system_powerdown`, libvirt's
    /// `virsh reboot` and `virsh shutdown`) and says `GUEST POWER BUTTON`; the machine needs ACPI.
    public var powerButton = false
    public var memoryMiB = 128
    /// `tcg` everywhere; `kvm` where /dev/kvm exists and speed matters more than parity with CI.
    public var accelerator = "tcg"
    public var extraKernelArguments: [String] = []
    /// Appended to the QEMU command line, e.g. a probe netdev on a NIC's hub.
    public var extraQEMUArguments: [String] = []

    public init(nics: [GuestNIC]) {
        self.nics = nics
    }

    /// The kernel command line scripts/guest/init reads.
    public var kernelCommandLine: String {
        // loglevel=3 keeps kernel chatter off the console before /init silences it entirely;
        // panic=-1 with QEMU's -no-reboot turns a guest panic into a QEMU exit the fixture sees;
        // no_timer_check skips the IO-APIC timer probe, which under TCG on a loaded host misses
        // its ticks and panics "IO-APIC + timer doesn't work" (seen in a parallel test run).
        var words = ["console=ttyS0", "loglevel=3", "panic=-1", "no_timer_check"]
        if !addresses.isEmpty {
            let pairs = addresses.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            words.append("macvtapd.ip=" + pairs.joined(separator: ","))
        }
        if !bonds.isEmpty {
            let specs = bonds.map { bond in
                "\(bond.name):\(bond.slaves.joined(separator: ",")):miimon=\(Self.milliseconds(bond.miimon))"
                    + (bond.primary.map { ":primary=\($0)" } ?? "")
            }
            words.append("macvtapd.bond=" + specs.joined(separator: ";"))
        }
        if let pingTarget {
            words.append("macvtapd.ping=\(pingTarget)")
            words.append("macvtapd.ping_interval=\(Self.seconds(pingInterval))")
        }
        words.append("macvtapd.poll=\(Self.seconds(pollInterval))")
        if let heartbeat { words.append("macvtapd.heartbeat=\(Self.seconds(heartbeat))") }
        if powerButton { words.append("macvtapd.power_button=1") }
        if !macChanges.isEmpty {
            let changes = macChanges.map { "\($0.interface)=\($0.mac)@\(Self.seconds($0.after))" }
            words.append("macvtapd.setmac=" + changes.joined(separator: ","))
        }
        return (words + extraKernelArguments).joined(separator: " ")
    }

    private static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    /// Seconds with millisecond precision in the plain decimal form busybox accepts.
    private static func seconds(_ duration: Duration) -> String {
        let total = milliseconds(duration)
        let fraction = String(total % 1000)
        return "\(total / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }
}
