import CMacvtapd
import MacvtapdCore

// Numbers from the kernel headers, narrowed once to the widths the wire format uses, so the
// codec reads as netlink and not as integer conversions.

enum MessageType {
    static let noop = UInt16(NLMSG_NOOP)
    static let error = UInt16(NLMSG_ERROR)
    static let done = UInt16(NLMSG_DONE)
    static let newLink = UInt16(RTM_NEWLINK)
    static let deleteLink = UInt16(RTM_DELLINK)
    static let getLink = UInt16(RTM_GETLINK)
    static let setLink = UInt16(RTM_SETLINK)
}

enum MessageFlags {
    static let request = UInt16(NLM_F_REQUEST)
    static let multipart = UInt16(NLM_F_MULTI)
    static let ack = UInt16(NLM_F_ACK)
    static let echo = UInt16(NLM_F_ECHO)
    static let dump = UInt16(NLM_F_DUMP)
    static let dumpInterrupted = UInt16(NLM_F_DUMP_INTR)
    static let create = UInt16(NLM_F_CREATE)
    static let exclusive = UInt16(NLM_F_EXCL)
    /// On NLMSG_ERROR: the original request was cut to its header (NETLINK_CAP_ACK).
    static let capped = UInt16(NLM_F_CAPPED)
    /// On NLMSG_ERROR / NLMSG_DONE: extended-ack attributes follow (NETLINK_EXT_ACK).
    static let ackTLVs = UInt16(NLM_F_ACK_TLVS)
}

enum LinkAttribute {
    static let address = UInt16(IFLA_ADDRESS)
    static let name = UInt16(IFLA_IFNAME)
    static let mtu = UInt16(IFLA_MTU)
    static let link = UInt16(IFLA_LINK)
    static let operationalState = UInt16(IFLA_OPERSTATE)
    static let linkInfo = UInt16(IFLA_LINKINFO)
    static let alias = UInt16(IFLA_IFALIAS)
    static let extendedMask = UInt16(IFLA_EXT_MASK)
    static let carrier = UInt16(IFLA_CARRIER)
    static let addressFamilySpecific = UInt16(IFLA_AF_SPEC)
    static let linkNetnsID = UInt16(IFLA_LINK_NETNSID)
    static let permanentAddress = UInt16(IFLA_PERM_ADDRESS)
}

/// IFLA_AF_SPEC nests one attribute per address family; AF_INET6's carries IFLA_INET6_*.
enum IPv6LinkAttribute {
    static let family = UInt16(AF_INET6)
    static let addressGenerationMode = UInt16(IFLA_INET6_ADDR_GEN_MODE)
    /// No link-local or autoconf address: the host itself stays silent on the link.
    static let addressGenerationNone = UInt8(IN6_ADDR_GEN_MODE_NONE.rawValue)
}

enum LinkInfoAttribute {
    static let kind = UInt16(IFLA_INFO_KIND)
    static let data = UInt16(IFLA_INFO_DATA)
}

enum MacvlanAttribute {
    static let mode = UInt16(IFLA_MACVLAN_MODE)
}

enum ExtendedAckAttribute {
    static let message = UInt16(NLMSGERR_ATTR_MSG.rawValue)
}

// NLA_F_NESTED and NLA_TYPE_MASK are expression macros Swift does not import.
enum AttributeFlags {
    static let nested: UInt16 = 0x8000
    static let typeMask: UInt16 = 0x3FFF
}

/// Leaves the 64-bit counters out of link messages: nothing here reads them and they are most of
/// the bytes of a dump.
let extendedMaskSkipStats = UInt32(RTEXT_FILTER_SKIP_STATS)

let interfaceUpFlag = UInt32(IFF_UP)

extension MacvtapMode {
    /// IFLA_MACVLAN_MODE value.
    var kernelValue: UInt32 {
        switch self {
        case .private: return MACVLAN_MODE_PRIVATE.rawValue
        case .vepa: return MACVLAN_MODE_VEPA.rawValue
        case .bridge: return MACVLAN_MODE_BRIDGE.rawValue
        case .passthru: return MACVLAN_MODE_PASSTHRU.rawValue
        }
    }

    /// nil for modes macvtapd does not manage (`source`) or values a newer kernel may add.
    init?(kernelValue: UInt32) {
        guard let mode = MacvtapMode.allCases.first(where: { $0.kernelValue == kernelValue }) else { return nil }
        self = mode
    }
}
