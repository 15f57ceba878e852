/// Runs `body` with `resource` and then `cleanup`, also when `body` throws: the shape of every
/// fixture's `with` (a sandbox, two hosts, a private libvirtd), whose cleanup is async and so
/// cannot be a `defer`.
public func withCleanup<Resource, Result>(
    _ resource: Resource, cleanup: (Resource) async -> Void, _ body: (Resource) async throws -> Result
) async throws -> Result {
    do {
        let result = try await body(resource)
        await cleanup(resource)
        return result
    } catch {
        await cleanup(resource)
        throw error
    }
}
