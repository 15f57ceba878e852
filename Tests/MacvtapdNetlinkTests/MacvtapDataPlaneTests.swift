import Glibc
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport
import Testing

/// An Ethernet frame with the local experimental ethertype and a marker the tests look for.
func testFrame(to destination: MACAddress, from source: MACAddress, marker: String) -> [UInt8] {
    var frame = destination.bytes + source.bytes + [0x88, 0xB5] + Array(marker.utf8)
    frame += [UInt8](repeating: 0, count: max(0, 60 - frame.count))
    return frame
}

func carries(_ marker: String, atOffset offset: Int) -> @Sendable ([UInt8]) -> Bool {
    { frame in
        frame.count >= offset + 14 + marker.utf8.count && frame[offset + 12] == 0x88 && frame[offset + 13] == 0xB5
            && frame[(offset + 14)...].starts(with: marker.utf8)
    }
}

@Suite("Frames through an opened macvtap")
struct MacvtapDataPlaneTests {
    @Test(arguments: MacvtapMode.allCases)
    func framesFlowBothWaysBetweenTapAndLowerPeer(mode: MacvtapMode) async throws {
        try await NetlinkTestHost.with { host in
            let macvtap = try await host.route.createMacvtap(host.macvtap(mode: mode))
            let tap = try await host.device.open(macvtap)
            defer { tap.closeInBackground() }
            let wire = try await PacketSocket.open(interface: host.veth.peer, in: host.namespace)
            defer { wire.close() }
            let peerMAC = try #require(try await host.route.link(named: host.veth.peer).address)
            let macvtapMAC = try #require(macvtap.address)
            let headerSize = try await MacvtapDevice.vnetHeaderSize(of: tap)
            #expect(headerSize == 10, "struct virtio_net_hdr until QEMU asks for the mergeable-buffers size")

            // Guest to wire: virtio_net_hdr (all zero: no offloads) then the frame.
            let outbound = "macvtapd-out-\(mode)"
            let written =
                [UInt8](repeating: 0, count: headerSize) + testFrame(to: peerMAC, from: macvtapMAC, marker: outbound)
            let count = try tap.withRawValue { fd in written.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
            #expect(count == written.count)
            let onWire = try await wire.receive(timeout: .seconds(3), matching: carries(outbound, atOffset: 0))
            #expect(onWire.map { Array($0.prefix(12)) } == peerMAC.bytes + macvtapMAC.bytes)

            // Wire to guest: addressed to the macvtap's MAC, delivered after a vnet header.
            let inbound = "macvtapd-in-\(mode)"
            try wire.send(testFrame(to: macvtapMAC, from: peerMAC, marker: inbound))
            // The descriptor stays open until the deferred close above.
            let fd = try tap.withRawValue { $0 }
            let delivered = try await PacketSocket.receive(
                from: fd, timeout: .seconds(3), matching: carries(inbound, atOffset: headerSize))
            #expect(delivered.map { Array($0[headerSize..<(headerSize + 12)]) } == macvtapMAC.bytes + peerMAC.bytes)
        }
    }
}
