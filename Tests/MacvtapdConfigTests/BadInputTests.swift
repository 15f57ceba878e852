import MacvtapdConfig
import MacvtapdCore
import MacvtapdTestSupport
import Testing

/// One invalid document, the position of the error it must produce, and words the message must hold.
struct BadInput: Sendable, CustomTestStringConvertible {
    var name: String
    var yaml: [UInt8]
    var at: String
    var message: String

    var testDescription: String { name }

    init(_ name: String, _ yaml: String, at: String, _ message: String) {
        self.init(name, bytes: Array(yaml.utf8), at: at, message)
    }

    init(_ name: String, bytes: [UInt8], at: String, _ message: String) {
        self.name = name
        self.yaml = bytes
        self.at = at
        self.message = message
    }
}

/// A valid document whose NIC `nic0` (line 6) gets `extra` lines from line 8 on, indented as its keys.
private func nicDoc(host: String = "eth0", _ extra: String...) -> String {
    (["version: 1", "vms:", "  web1:", "    qmp: /run/q.sock", "    nics:", "      nic0:", "        host: \(host)"]
        + extra.map { "        " + $0 }).joined(separator: "\n") + "\n"
}

private let web1 = "  web1:\n    qmp: /run/q.sock\n    nics: {}\n"

let badInputs: [BadInput] = [
    // The file as a whole.
    BadInput("empty file", "", at: "1:1", "the file is empty"),
    BadInput("comments only", "# nothing here\n", at: "1:1", "the file is empty"),
    BadInput(
        "top level is a sequence", "- version: 1\n", at: "1:1", "must be a mapping with keys version, defaults, vms"),
    BadInput("missing version", "vms: {}\n", at: "1:1", "missing 'version'"),
    BadInput(
        "unsupported version", "version: 2\nvms: {}\n", at: "1:10",
        "unsupported version 2; this macvtapd reads version 1"),
    BadInput(
        "version as string", "version: \"1\"\nvms: {}\n", at: "1:10",
        "'version' must be the integer 1, found the string '1'"),
    BadInput("missing vms", "version: 1\n", at: "1:1", "missing 'vms'"),
    BadInput("vms as sequence", "version: 1\nvms: [web1]\n", at: "2:6", "'vms' must be a mapping, found a sequence"),
    BadInput(
        "unknown top-level key", "version: 1\nvms: {}\nvm: {}\n", at: "3:1",
        "unknown key 'vm' in the configuration file; did you mean 'vms'?"),
    BadInput(
        "two documents", "version: 1\nvms: {}\n---\nversion: 1\n", at: "3:1", "a second YAML document starts here"),
    BadInput("tab indentation", "version: 1\nvms:\n\tweb1: {}\n", at: "3:1", "tabs cannot indent YAML"),
    BadInput(
        "invalid UTF-8", bytes: Array("version: 1\nvms: {}\n# caf".utf8) + [0xE9, 0x0A], at: "3:6",
        "not valid UTF-8 (byte 0xE9)"),
    BadInput("unclosed flow mapping", "version: 1\nvms: {web1: {}\n", at: "3:1", "invalid YAML"),
    BadInput("undefined alias", "version: 1\nvms: *nope\n", at: "2:6", "alias '*nope' refers to no anchor"),
    BadInput("merge key", "version: 1\nx: &x {}\nvms:\n  <<: *x\n", at: "2:1", "unknown key 'x'"),
    BadInput(
        "merge key is named", "version: 1\nvms:\n  web1:\n    <<: {qmp: /q}\n    nics: {}\n", at: "4:5",
        "merge keys ('<<') are not supported"),
    BadInput(
        "sequence as key", "version: 1\nvms:\n  ? [a]\n  : {}\n", at: "3:5",
        "a key in 'vms' must be a plain name, found a sequence"),
    // Defaults.
    BadInput(
        "defaults key typo", "version: 1\ndefaults:\n  mdoe: vepa\nvms: {}\n", at: "3:3",
        "unknown key 'mdoe' in 'defaults'; did you mean 'mode'?"),
    BadInput(
        "defaults bad link", "version: 1\ndefaults:\n  link: down\nvms: {}\n", at: "3:9",
        "invalid 'link' 'down'; allowed: follow, up"),
    BadInput(
        "defaults as scalar", "version: 1\ndefaults: vepa\nvms: {}\n", at: "2:11",
        "'defaults' must be a mapping with keys mode, link, announce, qmp, found the string 'vepa'"),
    // VMs.
    BadInput(
        "VM name starts with dash", "version: 1\nvms:\n  -web:\n    qmp: /q\n    nics: {}\n", at: "3:3",
        "invalid VM name '-web'"),
    BadInput(
        "VM name too long", "version: 1\nvms:\n  \(String(repeating: "v", count: 65)):\n    qmp: /q\n    nics: {}\n",
        at: "3:3", "longer than 64 characters"),
    BadInput(
        "VM name with space", "version: 1\nvms:\n  \"web 1\":\n    qmp: /q\n    nics: {}\n", at: "3:3",
        "only letters, digits, '_', '.' and '-' are allowed"),
    BadInput(
        "duplicate VM in one file", "version: 1\nvms:\n\(web1)\(web1)", at: "6:3",
        "duplicate key 'web1' in 'vms'; it is first defined at 3:3"),
    BadInput(
        "VM without qmp whose default gives no valid path",
        "version: 1\ndefaults:\n  qmp: /\(String(repeating: "q", count: 100)){vm}.sock\nvms:\n  web1:\n    nics: {}\n",
        at: "3:8", "VM 'web1' has no 'qmp', and the default"),
    BadInput(
        "relative default qmp", "version: 1\ndefaults:\n  qmp: run/{vm}.sock\nvms: {}\n", at: "3:8",
        "invalid 'qmp' in 'defaults': 'run/{vm}.sock' is not an absolute path"),
    BadInput(
        "PCI slot past 0x1f",
        "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0: {host: eth0, addr: \"0x20\"}\n",
        at: "6:32", "invalid 'addr' '0x20': write a PCI slot 0x0–0x1f"),
    BadInput(
        "PCI slot unquoted",
        "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0: {host: eth0, addr: 0x1e}\n",
        at: "6:32", "'addr' must be a quoted PCI slot like \"0x1e\" or \"0x1e.0\", found an integer (0x1e) (quote it"),
    BadInput(
        "PCI function past 7",
        "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0: {host: eth0, addr: \"1e.8\"}\n",
        at: "6:32", "invalid 'addr' '1e.8'"),
    BadInput(
        "model with a comma",
        "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0: {host: eth0, model: \"e1000,x=1\"}\n",
        at: "6:33", "invalid 'model' 'e1000,x=1': only letters, digits"),
    BadInput("VM without nics", "version: 1\nvms:\n  web1:\n    qmp: /q\n", at: "3:3", "VM 'web1' has no 'nics'"),
    BadInput(
        "VM key typo", "version: 1\nvms:\n  web1:\n    qmp: /q\n    nic: {}\n", at: "5:5",
        "unknown key 'nic' in VM 'web1'; did you mean 'nics'?"),
    BadInput(
        "qmp relative", "version: 1\nvms:\n  web1:\n    qmp: run/q.sock\n    nics: {}\n", at: "4:10",
        "'run/q.sock' is not an absolute path"),
    BadInput(
        "qmp too long", "version: 1\nvms:\n  web1:\n    qmp: /\(String(repeating: "q", count: 107))\n    nics: {}\n",
        at: "4:10", "a unix socket path has at most 107"),
    BadInput(
        "qmp as integer", "version: 1\nvms:\n  web1:\n    qmp: 5\n    nics: {}\n", at: "4:10",
        "'qmp' must be a string, found an integer (5)"),
    BadInput(
        "nics as scalar", "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics: eth0\n", at: "5:11",
        "'nics' of VM 'web1' must be a mapping, found the string 'eth0'"),
    BadInput(
        "same qmp for two VMs", "version: 1\nvms:\n\(web1)  web2:\n    qmp: /run/q.sock\n    nics: {}\n", at: "7:10",
        "which VM 'web1' uses at t.yaml:4:10"),
    // NICs.
    BadInput(
        "NIC id starts with digit",
        "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      0nic:\n        host: eth0\n", at: "6:7",
        "a QEMU device id must start with a letter"),
    BadInput(
        "NIC id with slash", "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic/0:\n        host: eth0\n",
        at: "6:7", "only letters, digits, '-', '.' and '_'"),
    BadInput(
        "NIC without host", "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0:\n        mode: vepa\n",
        at: "6:7", "NIC 'nic0' of VM 'web1' has no 'host'"),
    BadInput(
        "NIC key typo", nicDoc("mdoe: vepa"), at: "8:9",
        "unknown key 'mdoe' in NIC 'nic0' of VM 'web1'; did you mean 'mode'?"),
    BadInput(
        "duplicate NIC key", nicDoc("mode: vepa", "mode: bridge"), at: "9:9",
        "duplicate key 'mode' in NIC 'nic0' of VM 'web1'; it is first defined at 8:9"),
    BadInput(
        "interface name too long", nicDoc(host: "enp0s31f6-uplink"), at: "7:15",
        "16 bytes long; Linux interface names have at most 15"),
    BadInput("interface name with slash", nicDoc(host: "eth/0"), at: "7:15", "cannot contain '/', ':' or whitespace"),
    BadInput(
        "interface name with colon", nicDoc(host: "\"eth0:1\""), at: "7:15", "invalid host interface name 'eth0:1'"),
    BadInput("interface name dot", nicDoc(host: "\".\""), at: "7:15", "'.' and '..' are not interface names"),
    BadInput("host missing value", nicDoc(host: ""), at: "7:14", "'host' must be a string, found nothing (null)"),
    BadInput(
        "host as sequence", nicDoc(host: "[eth0]"), at: "7:15",
        "must be a mapping with keys name, mac, path, property, found a sequence"),
    BadInput(
        "host with name and mac", nicDoc(host: "{name: eth0, mac: \"3c:fd:fe:aa:bb:cc\"}"), at: "7:15",
        "has 'name' and 'mac'; give exactly one of name, mac, path, property"),
    BadInput(
        "host with path and property", nicDoc(host: "{path: pci-0000:03:00.0, property: {ID_PATH: x}}"), at: "7:15",
        "has 'path' and 'property'; give exactly one of name, mac, path, property"),
    BadInput("host with neither", nicDoc(host: "{}"), at: "7:15", "has none of name, mac, path, property"),
    BadInput("host path empty", nicDoc(host: "{path: \"\"}"), at: "7:22", "invalid 'path' '': it is empty"),
    BadInput("host path null", nicDoc(host: "{path: }"), at: "7:22", "'path' must be a string, found nothing"),
    BadInput(
        "host path with newline", nicDoc(host: "{path: \"pci-0000:03:00.0\\n\"}"), at: "7:22",
        "contains a control character"),
    BadInput(
        "host path as number", nicDoc(host: "{path: 3}"), at: "7:22",
        "'path' must be a string, found an integer (3) (quote it to make it a string)"),
    BadInput(
        "host property not a mapping", nicDoc(host: "{property: ID_PATH}"), at: "7:26",
        "'property' of 'host' of NIC 'nic0' of VM 'web1' must be a mapping, found the string 'ID_PATH'"),
    BadInput(
        "host property empty", nicDoc(host: "{property: {}}"), at: "7:26",
        "'property' of 'host' of NIC 'nic0' of VM 'web1' is empty; give one or more udev properties"),
    BadInput(
        "host property bad name", nicDoc(host: "{property: {ID-PATH: x}}"), at: "7:27",
        "invalid udev property name 'ID-PATH': a udev property name holds only letters, digits and '_'"),
    BadInput(
        "host property value not a string", nicDoc(host: "{property: {ID_NET_NAME_PATH: [a]}}"), at: "7:45",
        "'ID_NET_NAME_PATH' must be a string, found a sequence"),
    BadInput(
        "host property value empty", nicDoc(host: "{property: {ID_NET_NAME_PATH: \"\"}}"), at: "7:45",
        "invalid value '' of udev property 'ID_NET_NAME_PATH': it is empty"),
    BadInput(
        "host property duplicate", nicDoc(host: "{property: {ID_PATH: a, ID_PATH: b}}"), at: "7:39",
        "duplicate key 'ID_PATH' in 'property' of 'host'"),
    BadInput(
        "host key typo", nicDoc(host: "{nmae: eth0}"), at: "7:16",
        "unknown key 'nmae' in 'host' of NIC 'nic0' of VM 'web1'; did you mean 'name'?"),
    BadInput(
        "host MAC malformed", nicDoc(host: "{mac: \"3c:fd:fe:aa:bb\"}"), at: "7:21",
        "'3c:fd:fe:aa:bb' is not a MAC address"),
    BadInput(
        "mode typo", nicDoc("mode: brige"), at: "8:15",
        "invalid 'mode' 'brige'; allowed: bridge, vepa, private, passthru; did you mean 'bridge'?"),
    BadInput(
        "mode as integer", nicDoc("mode: 1"), at: "8:15",
        "'mode' must be one of bridge, vepa, private, passthru, found an integer (1)"),
    BadInput(
        "link as boolean", nicDoc("link: true"), at: "8:15", "'link' must be one of follow, up, found a boolean (true)"),
    BadInput(
        "announce as string", nicDoc("announce: \"true\""), at: "8:19",
        "'announce' must be true or false, found the string 'true'"),
    BadInput(
        "announce as yes", nicDoc("announce: yes"), at: "8:19",
        "YAML 1.2 reads 'yes' as a string; write true or false"),
    BadInput(
        "defaults announce as integer", "version: 1\ndefaults:\n  announce: 1\nvms: {}\n", at: "3:13",
        "'announce' must be true or false, found an integer (1)"),
    BadInput(
        "MAC neither an address nor guest", nicDoc("mac: gest"), at: "8:14",
        "'gest' is not a MAC address; write six colon-separated hex pairs, like 52:54:00:12:34:56, or 'guest'"),
    BadInput(
        "MAC with dashes", nicDoc("mac: \"52-54-00-12-34-56\""), at: "8:14", "write six colon-separated hex pairs"),
    BadInput("MAC multicast", nicDoc("mac: \"01:00:5e:00:00:01\""), at: "8:14", "is a multicast (group) MAC address"),
    BadInput("MAC all zero", nicDoc("mac: \"00:00:00:00:00:00\""), at: "8:14", "is the all-zero MAC address"),
    BadInput("MAC as mapping", nicDoc("mac: {a: b}"), at: "8:14", "'mac' must be a string, found a mapping"),
    BadInput(
        "hub as string", nicDoc("hub: \"10\""), at: "8:14",
        "'hub' must be a non-negative integer (a QEMU hub id, like 'hub: 10'), found the string '10'"),
    BadInput("hub negative", nicDoc("hub: -1"), at: "8:14", "'hub' must be between 0 and 2147483647, found -1"),
    BadInput(
        "hub too large", nicDoc("hub: 99999999999999999999"), at: "8:14",
        "'hub' must be between 0 and 2147483647, found 99999999999999999999"),
    BadInput("hub octal digits wrong", nicDoc("hub: 0o9"), at: "8:14", "found the string '0o9'"),
    BadInput(
        "VM with no body", "version: 1\nvms:\n  web1:\n", at: "3:8",
        "VM 'web1' must be a mapping with keys qmp, nics, found nothing (null)"),
    BadInput("hub float", nicDoc("hub: 1.5"), at: "8:14", "found a floating-point number (1.5)"),
    BadInput(
        "same hub for two NICs",
        nicDoc("hub: 3", "mac: \"52:54:00:00:00:01\"") + "      nic1:\n        host: eth1\n        hub: 3\n",
        at: "12:14", "hub 3 is already used by NIC 'nic0' of VM 'web1' at 8:14"),
    BadInput(
        "same MAC for two NICs",
        nicDoc("mac: \"52:54:00:00:00:01\"") + "      nic1:\n        host: eth1\n        mac: \"52:54:00:00:00:01\"\n",
        at: "11:14", "MAC 52:54:00:00:00:01 of NIC web1/nic1 is also the MAC of NIC web1/nic0 at t.yaml:8:14"),
]

@Suite("Invalid configurations: message and exact position")
struct BadInputTests {
    @Test(arguments: badInputs)
    func rejected(_ input: BadInput) {
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", bytes: input.yaml)])
        #expect(result.desired == nil)
        let match = result.diagnostics.first {
            $0.location.map { "\($0.line):\($0.column)" } == input.at && $0.message.contains(input.message)
        }
        #expect(match != nil, "expected t.yaml:\(input.at) '\(input.message)'; got \(result.diagnostics)")
        #expect(result.diagnostics.allSatisfy { $0.location?.file == "t.yaml" })
    }

    @Test func everyErrorIsReportedNotJustTheFirst() {
        let yaml = nicDoc("mode: brige", "link: dwon", "hub: -1", "mac: \"01:00:00:00:00:01\"", "extra: 1")
        let result = ConfigLoader.load([ConfigSource(path: "t.yaml", text: yaml)])
        let positions = result.diagnostics.map { "\($0.location!.line):\($0.location!.column)" }
        #expect(positions == ["8:15", "9:15", "10:14", "11:14", "12:9"])
    }

    @Test func diagnosticsPrintLikeACompiler() {
        let result = ConfigLoader.load([ConfigSource(path: "conf.d/10-web.yaml", text: "version: 2\nvms: {}\n")])
        #expect(
            result.diagnostics.map(\.description) == [
                "conf.d/10-web.yaml:1:10: error: unsupported version 2; this macvtapd reads version 1"
            ])
    }
}
