import MacvtapdQMP

/// libFuzzer entry: bytes → the `info network` and `info qtree` parsers (QEMU's human-monitor
/// text, which a hostile or newer QEMU can make anything). A parse error or a topology, never a
/// crash or a hang; every NIC's hub can be looked up; some NICs' MACs.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetworkInfo(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    _ = DeviceTree.deviceMACs(parsing: text)
    do {
        let info = try NetworkInfo(parsing: text)
        for nic in info.nics { _ = info.hubID(ofNIC: nic.id) }
        for hub in info.hubs {
            _ = hub.backendPorts
            for port in hub.ports { _ = port.peer?.parameters }
        }
        _ = info.netdevIDs
    } catch {
        _ = error.description
    }
    return 0
}
