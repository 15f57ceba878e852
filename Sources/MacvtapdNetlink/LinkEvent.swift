/// What the link monitor reports.
public enum LinkEvent: Hashable, Sendable {
    /// The first notification of a link in this namespace: created, or moved in from another one.
    case added(Link)
    /// Anything else about an existing link changed (flags, carrier, operstate, MAC, alias, name).
    case changed(Link)
    case deleted(Link)
    /// Notifications were lost (the socket's receive buffer overflowed, the consumer fell too far
    /// behind, or a message did not parse): observed state must be re-read with a full dump.
    case resyncNeeded
}

extension LinkEvent {
    /// The event an RTNLGRP_LINK notification stands for; nil for messages about anything else.
    /// A notification that does not parse is a lost event, hence `.resyncNeeded`.
    package init?(notification message: NetlinkMessage) {
        let type = message.header.type
        guard type == MessageType.newLink || type == MessageType.deleteLink else { return nil }
        guard let decoded = try? LinkMessage.decode(message) else {
            self = .resyncNeeded
            return
        }
        if type == MessageType.deleteLink {
            self = .deleted(decoded.link)
        } else if decoded.change == LinkMessage.newLinkChangeMask {
            self = .added(decoded.link)
        } else {
            self = .changed(decoded.link)
        }
    }
}
