import MacvtapdConfig
import MacvtapdControl

/// libFuzzer entry: one call read from the control socket (the bytes before its NUL) → what the
/// daemon's ControlService does with it before it reaches the controller: the varlink header, the
/// method, each method's parameters, and for Plan the configuration files the client sent, which
/// the daemon validates itself. Any local user who may connect reaches this parser.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let message = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let header: ControlCallHeader
    do {
        header = try ControlWire.decodeHeader(message)
    } catch {
        _ = ControlWire.encode(error)
        return 0
    }
    do {
        guard let method = ControlProtocol.Method(rawValue: header.method) else {
            throw ControlError.methodNotFound(header.method)
        }
        switch method {
        case .getInfo, .status: break
        case .getInterfaceDescription:
            _ = try ControlWire.decodeParameters(InterfaceDescriptionParameters.self, from: message).interface
        case .plan:
            let parameters = try ControlWire.decodeParameters(PlanParameters.self, from: message)
            let result = ConfigLoader.load(parameters.files.map { ConfigSource(path: $0.path, text: $0.content) })
            _ = result.diagnostics.map(\.description)
        case .apply:
            let parameters = try ControlWire.decodeParameters(ApplyParameters.self, from: message)
            _ = min(max(parameters.timeoutMs ?? 30_000, 1), 600_000)
        }
    } catch let error as ControlError {
        _ = ControlWire.encode(error)
    } catch {
        _ = ControlWire.encode(.invalidRequest("\(error)"))
    }
    return 0
}
