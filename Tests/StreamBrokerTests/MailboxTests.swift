import Testing

@testable import StreamBroker

@Suite("Mailbox")
struct MailboxTests {
    @Test func takesEverythingQueuedInOrder() async {
        let mailbox = Mailbox<Int>()
        for n in 1...5 { #expect(mailbox.send(n)) }
        #expect(await mailbox.next() == [1, 2, 3, 4, 5])
        mailbox.send(6)
        #expect(await mailbox.next() == [6])
    }

    @Test func aWaitingConsumerIsWokenByTheNextSend() async {
        let mailbox = Mailbox<Int>()
        async let batch = mailbox.next()
        // The consumer may or may not be waiting yet: either way it gets the element.
        mailbox.send(7)
        #expect(await batch == [7])
    }

    @Test func aBoundedSendRefusesPastTheLimitUntilTheConsumerTakes() async {
        let mailbox = Mailbox<Int>()
        #expect(mailbox.send(1, unlessQueued: 2))
        #expect(mailbox.send(2, unlessQueued: 2))
        #expect(!mailbox.send(3, unlessQueued: 2), "two are queued: the third is not")
        #expect(mailbox.send(4), "an unbounded send still queues")
        #expect(await mailbox.next() == [1, 2, 4])
        #expect(mailbox.send(5, unlessQueued: 2))
        #expect(await mailbox.next() == [5])
        _ = mailbox.finish()
        #expect(!mailbox.send(6, unlessQueued: 2), "nothing is queued after finish")
    }

    @Test func aQuietSendDoesNotWakeTheConsumerUntilTheNextSendOrTheLimit() async {
        let mailbox = Mailbox<Int>()
        let consumer = Task { await mailbox.next() }
        while !mailbox.isWaiting { await Task.yield() }
        #expect(mailbox.sendQuietly(1, wakeAt: 3))
        #expect(mailbox.sendQuietly(2, wakeAt: 3))
        #expect(mailbox.isWaiting, "two quiet elements below the limit: the consumer still waits")
        #expect(mailbox.send(3))
        #expect(await consumer.value == [1, 2, 3], "the next send wakes it with everything, in order")

        let second = Task { await mailbox.next() }
        while !mailbox.isWaiting { await Task.yield() }
        for n in 4...6 { mailbox.sendQuietly(n, wakeAt: 3) }
        #expect(await second.value == [4, 5, 6], "the third quiet element reaches the limit and wakes it")
        _ = mailbox.finish()
        #expect(!mailbox.sendQuietly(7, wakeAt: 3), "nothing is queued after finish")
    }

    @Test func finishReturnsWhatWasNotTakenAndRefusesMore() async {
        let mailbox = Mailbox<Int>()
        mailbox.send(1)
        mailbox.send(2)
        #expect(mailbox.finish() == [1, 2])
        #expect(!mailbox.send(3), "nothing is queued after finish")
        #expect(await mailbox.next() == nil)
    }

    @Test func finishWakesAWaitingConsumerWithNil() async {
        let mailbox = Mailbox<Int>()
        let consumer = Task { await mailbox.next() }
        while !Task.isCancelled {
            // Finish only once the consumer waits, so that this exercises the waiting path.
            if mailbox.isWaiting { break }
            await Task.yield()
        }
        #expect(mailbox.finish() == [])
        #expect(await consumer.value == nil)
    }

    @Test func pollTakesWhatIsQueuedWithoutWaiting() {
        let mailbox = Mailbox<Int>()
        #expect(mailbox.poll() == [])
        mailbox.send(1)
        mailbox.send(2)
        #expect(mailbox.poll() == [1, 2])
        #expect(mailbox.poll() == [])
        _ = mailbox.finish()
        #expect(mailbox.poll() == nil)
    }

    @Test func finishIfEmptyRefusesWhileSomethingIsQueued() async {
        let mailbox = Mailbox<Int>()
        mailbox.send(1)
        #expect(!mailbox.finishIfEmpty(), "an input arrived: the consumer goes on")
        #expect(mailbox.send(2))
        #expect(await mailbox.next() == [1, 2])
        #expect(mailbox.finishIfEmpty())
        #expect(!mailbox.send(3))
        #expect(await mailbox.next() == nil)
    }

    @Test func finishIfEmptyWakesAWaitingConsumerWithNil() async {
        let mailbox = Mailbox<Int>()
        let consumer = Task { await mailbox.next() }
        while !mailbox.isWaiting { await Task.yield() }
        #expect(mailbox.finishIfEmpty())
        #expect(await consumer.value == nil)
    }
}
