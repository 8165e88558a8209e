import NIOCore
import NIOPosix

/// Runs a task's jobs on one NIO event loop: a dispatcher started with this preference runs
/// on the loop of the connection that created it, so that the frames it queues for
/// connections of that loop are written in the same loop turn, without waking another thread,
/// and the store's thread wakes each loop once for a commit's events, however many of the
/// loop's dispatchers take them.
///
/// What runs on the loop is the dispatcher's own work (decisions, encoding, queuing frames);
/// its store reads and commits still run on the store's threads and resume here.
///
/// - Important: the loop must outlive every task that prefers it: NIO drops (with an error
///   message) what is scheduled on a loop that was shut down, and such a task would never
///   finish. The gateway's loops are NIO's singleton group, which is never shut down.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The executor of the event loop this thread runs, if it runs one.
    static var current: EventLoopExecutor? {
        MultiThreadedEventLoopGroup.currentEventLoop.map(EventLoopExecutor.init)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
