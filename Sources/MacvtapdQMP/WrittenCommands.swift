/// The keys of the commands written to a monitor and not yet answered, in write order: the queue
/// QEMU's replies are matched against. A pipeline of a VM's 25 attaches is 75 commands; the
/// answered head is dropped in one step once it outgrows what is still waiting.
struct WrittenCommands {
    private var keys: [Int64] = []
    private var head = 0

    mutating func append(_ key: Int64) { keys.append(key) }

    mutating func removeOldest() -> Int64? {
        guard head < keys.count else { return nil }
        let key = keys[head]
        head += 1
        if head == keys.count {
            keys.removeAll(keepingCapacity: false)
            head = 0
        } else if head >= 64, head * 2 >= keys.count {
            keys.removeFirst(head)
            head = 0
        }
        return key
    }
}
