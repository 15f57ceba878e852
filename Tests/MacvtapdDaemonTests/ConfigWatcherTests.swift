import MacvtapdDaemon
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Waits for the next element of `stream`, or nil after `timeout`.
func next(_ stream: AsyncStream<Void>, within timeout: Duration) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
        group.addTask {
            var iterator = stream.makeAsyncIterator()
            return await iterator.next() != nil
        }
        group.addTask {
            try? await Task.sleep(for: timeout)
            return false
        }
        let first = await group.next()!
        group.cancelAll()
        return first
    }
}

@Suite struct ConfigWatcherTests {
    @Test func seesAtomicRenameOverTheFile() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("macvtapd.yaml", "version: 1\n")
        let watcher = try ConfigWatcher(path: directory.path + "/macvtapd.yaml", debounce: .milliseconds(20))
        defer { watcher.close() }

        // What editors and config-management tools do: write a new file, rename it over the old.
        try directory.write(".macvtapd.yaml.tmp", "version: 1\nvms: {}\n")
        rename(directory.path + "/.macvtapd.yaml.tmp", directory.path + "/macvtapd.yaml")
        #expect(await next(watcher.changes, within: .seconds(2)))
    }

    @Test func ignoresOtherFilesNextToTheConfigFile() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("macvtapd.yaml", "version: 1\n")
        let watcher = try ConfigWatcher(path: directory.path + "/macvtapd.yaml", debounce: .milliseconds(20))
        defer { watcher.close() }
        try directory.write("unrelated.txt", "x")
        #expect(!(await next(watcher.changes, within: .milliseconds(300))))
    }

    @Test func coalescesABurstInAConfDirectory() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let watcher = try ConfigWatcher(path: directory.path, debounce: .milliseconds(150))
        defer { watcher.close() }
        for index in 0..<5 { try directory.write("\(index)-vm.yaml", "version: 1\n") }
        #expect(await next(watcher.changes, within: .seconds(2)))
        #expect(!(await next(watcher.changes, within: .milliseconds(400))), "one signal for the burst")
    }

    @Test func closeEndsTheStream() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let watcher = try ConfigWatcher(path: directory.path)
        watcher.close()
        var iterator = watcher.changes.makeAsyncIterator()
        #expect(await iterator.next() == nil)
    }

    @Test func missingDirectoryIsAClearError() {
        #expect {
            try ConfigWatcher(path: "/nonexistent-macvtapd-dir/x.yaml")
        } throws: { error in
            "\(error)".contains("cannot watch /nonexistent-macvtapd-dir")
        }
    }
}
