import MacvtapdCore

/// The `-device mac=` of every NIC, from QEMU's `info qtree` (qdev-monitor.c `qdev_print`): one
/// HMP command for all NICs instead of a `qom-get` each. QEMU reads its monitor one byte per
/// main-loop pass, so what a command costs QEMU grows with the bytes sent: 25 `qom-get`s (2.3 KB)
/// cost a 25-NIC VM's QEMU 14 ms of CPU, its `info qtree` 3.5 ms (QEMU 7.2 here; README, Benchmarks).
///
///     bus: pcie.0
///       type PCIE
///       dev: virtio-net-pci, id "nic0"
///         addr = 02.0
///         bus: virtio-bus
///           type virtio-pci-bus
///           dev: virtio-net-device, id ""
///             mac = "52:54:00:12:34:56"
///             netdev = "nic0.port"
///       dev: e1000, id "nic1"
///         mac = "52:54:00:12:34:57"
///
/// A device's properties and children are indented deeper than its `dev:` line. A `mac` belongs
/// to the innermost enclosing device that has an id: virtio NICs keep it on their unnamed
/// virtio-net-device child, other models on the device itself; a bridge with an id around a NIC
/// never takes the NIC's MAC, which comes deeper. Lines of any other shape are skipped: a NIC
/// this finds no MAC for is left out, and the caller asks for it alone.
///
/// Known limit: the reply is one line, and the client drops a session whose line passes its
/// `maximumLineLength` (1 MiB): about 3 KB a PCI device, so a VM with some 300 devices or more.
public enum DeviceTree {
    public static func deviceMACs(parsing text: String) -> [String: MACAddress] {
        var text = text
        return text.withUTF8 { bytes in
            var macs: [String: MACAddress] = [:]
            // Devices with an id around the current line: (indentation of the `dev:` line, id).
            var open: [(indent: Int, id: String)] = []
            var start = 0
            while start < bytes.count {
                var end = start
                while end < bytes.count, bytes[end] != UInt8(ascii: "\n") { end += 1 }
                let next = end + 1
                if end > start, bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                var body = start
                while body < end, bytes[body] == UInt8(ascii: " ") { body += 1 }
                let indent = body - start
                while let last = open.last, last.indent >= indent { open.removeLast() }
                let line = UnsafeBufferPointer(rebasing: bytes[body..<end])
                if line.starts(with: "dev: ".utf8) {
                    // `dev: TYPE, id "ID"`; QEMU ids are letters, digits, '-', '.', '_': no quotes.
                    if let id = quoted(after: ", id ", in: line), !id.isEmpty { open.append((indent, id)) }
                } else if line.starts(with: "mac = ".utf8), let owner = open.last, macs[owner.id] == nil,
                    let value = quoted(after: "mac = ", in: line), let mac = MACAddress(value)
                {
                    macs[owner.id] = mac
                }
                start = next
            }
            return macs
        }
    }

    /// The double-quoted text that ends `line`, if `marker` comes right before its opening quote.
    private static func quoted(after marker: StaticString, in line: UnsafeBufferPointer<UInt8>) -> String? {
        let quote = UInt8(ascii: "\"")
        let marker = UnsafeBufferPointer(start: marker.utf8Start, count: marker.utf8CodeUnitCount)
        guard line.count >= marker.count + 2, line[line.count - 1] == quote,
            let opening = line[..<(line.count - 1)].lastIndex(of: quote), opening >= marker.count,
            line[(opening - marker.count)..<opening].elementsEqual(marker)
        else { return nil }
        return String(decoding: UnsafeBufferPointer(rebasing: line[(opening + 1)..<(line.count - 1)]), as: UTF8.self)
    }
}
