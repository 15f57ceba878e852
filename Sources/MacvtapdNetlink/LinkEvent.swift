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
