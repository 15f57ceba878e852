import MacvtapdTestSupport

/// Runs the built `macvtapd` with `arguments`.
func macvtapd(_ arguments: [String]) async throws -> ChildResult {
    try await ChildProcess.run(try ChildProcess.macvtapdBinary(), arguments)
}

/// A configuration with two bindings and no hosts to reach: enough to parse and plan.
let twoBindings = """
    version: 1
    vms:
      web1:
        qmp: /nonexistent/macvtapd-test/web1.sock
        nics:
          nic0: {host: eth0}
          nic1: {host: eth1}

    """
