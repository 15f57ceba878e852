import MacvtapdCore
import MacvtapdTestSupport

/// A host on the guest's subnet, behind a hub probe: answers ARP for its address and echo
/// requests sent to it, the way a far side answers the guest's own pings.
struct GuestPeer {
    let mac: MACAddress
    let ip: [UInt8]

    /// Answers what the probe has queued; returns how many frames it answered.
    @discardableResult
    func answer(_ probe: HubProbe) throws -> Int {
        var answered = 0
        for frame in probe.drain() {
            if let arp = GuestFrames.arp(frame), arp.isRequest, arp.targetIP == ip {
                try probe.send(GuestFrames.arpReply(from: mac, ip: ip, to: arp.senderMAC, ip: arp.senderIP))
                answered += 1
            } else if let echo = GuestFrames.echo(frame), echo.isRequest, echo.destinationIP == ip {
                try probe.send(
                    GuestFrames.echo(
                        request: false, from: mac, ip, to: echo.sourceMAC, echo.sourceIP, identifier: echo.identifier,
                        sequence: echo.sequence, payload: echo.payload))
                answered += 1
            }
        }
        return answered
    }

    /// Answers until the guest reports a ping reply with a sequence number above `sequence`, and
    /// returns that reply's sequence number.
    func serve(_ probe: HubProbe, for vm: GuestVM, untilPingAfter sequence: Int, timeout: Duration) async throws
        -> Int
    {
        let target = ip.map(String.init).joined(separator: ".")
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            try answer(probe)
            for case .ping(target, let seen) in vm.events where seen > sequence { return seen }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw GuestTestFailure("guest: no GUEST PING \(target) with seq > \(sequence) within \(timeout)")
    }
}
