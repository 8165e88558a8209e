import Logging

/// Runs work that must run on one replica at a time under a `job:NAME` lease (SPEC §7): takes
/// the lease when it is free or expired, renews it every TTL/3 while `work` runs, and cancels
/// `work` as soon as a renewal fails.
struct JobLease: Sendable {
    let name: String
    let coordination: any Coordination
    let owner: String
    let ttlMs: Int64
    let logger: Logger

    /// Loops until cancelled: whenever the lease is held, runs `work` until it ends or the
    /// lease is lost, then releases the lease.
    func run(_ work: @escaping @Sendable () async -> Void) async {
        let id = LeaseID.job(name)
        while !Task.isCancelled {
            let epoch: Int64?
            do {
                epoch = try await coordination.takeLease(id, owner: owner, ttlMs: ttlMs)
            } catch {
                logger.warning("job lease unavailable", metadata: [LogKey.job: "\(name)", LogKey.error: "\(error)"])
                epoch = nil
            }
            guard let epoch else {
                try? await Task.sleep(for: .milliseconds(max(50, ttlMs / 3)))
                continue
            }
            logger.info("running job", metadata: [LogKey.job: "\(name)", LogKey.epoch: "\(epoch)"])
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await work() }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(max(50, ttlMs / 3)))
                        if Task.isCancelled { return }
                        let renewed = (try? await coordination.renewLease(id, owner: owner, epoch: epoch, ttlMs: ttlMs)) ?? false
                        if !renewed {
                            logger.warning("job lease lost", metadata: [LogKey.job: "\(name)", LogKey.epoch: "\(epoch)"])
                            return
                        }
                    }
                }
                // Whichever ends first (the work, or the lease) ends both.
                await group.next()
                group.cancelAll()
            }
            try? await coordination.releaseLease(id, owner: owner, epoch: epoch)
        }
    }
}
