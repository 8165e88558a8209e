// The JavaScript client against a real broker: publish/subscribe, idempotent publishes, ack and
// nack, credits, TaskQueue, and a reconnect across a SIGKILL of the broker.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { StreamBrokerClient, TaskQueue } from '../../clients/js/streambroker.js';
import { Broker, eventually, sleep, within } from './broker.mjs';

/** Takes `count` messages from a subscription, failing after `ms`; with `ack`, acks each as it
 * is taken (a group delivers at most max_inflight unacked messages). */
async function take(subscription, count, ms = 10_000, { ack = false } = {}) {
  const messages = [];
  const deadline = Date.now() + ms;
  while (messages.length < count) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`took ${messages.length} of ${count} messages`);
    const { value, done } = await within(subscription.next(), left, `message ${messages.length + 1} of ${count}`);
    assert.equal(done, false, 'the subscription ended early');
    if (ack) value.ack();
    messages.push(value);
  }
  return messages;
}

async function committed(broker, topic, group) {
  const body = await broker.get(`/topics/${topic}/offsets`);
  const entry = body.groups.find((g) => g.group === group);
  return entry ? entry.partitions[0].committed : 0;
}

describe('with one broker', () => {
  const broker = new Broker();
  let client;

  before(async () => {
    await broker.start();
    client = new StreamBrokerClient({ url: broker.url });
    await within(client.connect(), 10_000, 'connect');
  });

  after(async () => {
    await client?.close();
    await broker.stop();
  });

  test('publish and subscribe: PUBLISHED fields, many in flight, key, headers and payload delivered', async () => {
    const sub = await client.subscribe('js.pubsub', { group: 'g', from: 'earliest' });
    const sent = await Promise.all(
      Array.from({ length: 40 }, (_, n) => client.publish('js.pubsub', { n }, { key: `k${n % 3}`, headers: { ct: 'json', n: String(n) } })),
    );
    assert.deepEqual(sent.map((p) => p.offset).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i + 1));
    for (const p of sent) {
      assert.equal(p.topic, 'js.pubsub');
      assert.equal(p.partition, 0);
      assert.equal(p.duplicate, false);
      assert.match(p.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    }
    assert.equal(new Set(sent.map((p) => p.id)).size, 40);

    const messages = await take(sub, 40, 10_000, { ack: true });
    const byN = new Map(messages.map((m) => [m.payload.n, m]));
    assert.equal(byN.size, 40);
    for (const [n, m] of byN) {
      assert.equal(m.key, `k${n % 3}`);
      assert.equal(m.headers.ct, 'json');
      assert.equal(m.headers.n, String(n));
      assert.equal(m.attempt, 1);
      assert.equal(m.group, 'g');
      assert.equal(m.id, sent[n].id);
      assert.equal(m.offset, sent[n].offset);
    }
    await eventually(async () => (await committed(broker, 'js.pubsub', 'g')) === 40, { what: 'the group to commit 40' });
    sub.unsubscribe();
    assert.deepEqual(await sub.next(), { value: undefined, done: true });
  });

  test('a publish with the same id twice is stored once and answers duplicate: true', async () => {
    const first = await client.publish('js.idem', { v: 1 }, { id: 'order-42' });
    const second = await client.publish('js.idem', { v: 1 }, { id: 'order-42' });
    assert.equal(first.duplicate, false);
    assert.equal(second.duplicate, true);
    assert.equal(second.offset, first.offset);
    assert.equal(second.id, 'order-42');
    const events = await broker.events('js.idem');
    assert.deepEqual(events.map((e) => e.id), ['order-42']);
  });

  test('a publish whose confirmation is lost is sent again after the reconnect, with its id, and stored once', async () => {
    // A WebSocket that drops the first PUBLISHED for the id and closes the connection, as if the
    // connection broke after the broker stored the event.
    let dropped = 0;
    class LossyWebSocket extends WebSocket {
      addEventListener(type, listener, options) {
        if (type !== 'message') return super.addEventListener(type, listener, options);
        return super.addEventListener(type, (event) => {
          if (dropped === 0 && typeof event.data === 'string' && event.data.includes('"PUBLISHED"') && event.data.includes('lost-ack-1')) {
            dropped += 1;
            this.close();
            return;
          }
          listener(event);
        }, options);
      }
    }
    const lossy = new StreamBrokerClient({ url: broker.url, WebSocket: LossyWebSocket, initialBackoffMs: 50 });
    try {
      await lossy.connect();
      const published = await within(lossy.publish('js.lost', { v: 1 }, { id: 'lost-ack-1' }), 10_000, 'the retried publish');
      assert.equal(dropped, 1);
      assert.equal(lossy.connections, 2);
      assert.equal(published.duplicate, true);
      assert.deepEqual((await broker.events('js.lost')).map((e) => e.id), ['lost-ack-1']);
    } finally {
      await lossy.close();
    }
  });

  test('nack redelivers with attempt 2, reason and delay honoured; an acked message does not come back', async () => {
    await client.publish('js.nack', { job: 1 });
    const sub = await client.subscribe('js.nack', { group: 'g', from: 'earliest', ackTimeoutMs: 60_000 });
    const [first] = await take(sub, 1);
    assert.equal(first.attempt, 1);
    const nackedAt = Date.now();
    first.nack({ reason: 'not yet', delayMs: 300 });
    const [again] = await take(sub, 1);
    assert.ok(Date.now() - nackedAt >= 250, 'redelivered before its delay');
    assert.equal(again.offset, first.offset);
    assert.equal(again.attempt, 2);
    assert.deepEqual(again.payload, { job: 1 });
    again.ack();
    await eventually(async () => (await committed(broker, 'js.nack', 'g')) === first.offset, { what: 'the ack to commit' });
    const next = await Promise.race([sub.next(), sleep(700).then(() => 'nothing')]);
    assert.equal(next, 'nothing', 'an acked message came back');
    sub.unsubscribe();
  });

  test('credits: the broker sends no more than the window until messages are taken', async () => {
    await Promise.all(Array.from({ length: 12 }, (_, n) => client.publish('js.credits', { n })));
    // max_inflight alone would let 8 through; the FLOW credits hold it to 3.
    const sub = await client.subscribe('js.credits', { group: 'g', from: 'earliest', maxInflight: 8, window: 3 });
    await eventually(() => sub.buffered === 3, { what: '3 messages buffered' });
    await sleep(500);
    assert.equal(sub.buffered, 3, 'more than the window arrived while nothing was taken');

    const taken = await take(sub, 2);
    for (const m of taken) m.ack();
    await eventually(() => sub.buffered === 3, { what: 'the window to refill' });
    await sleep(500);
    assert.equal(sub.buffered, 3, 'more than the credits granted arrived');

    const rest = await take(sub, 10, 10_000, { ack: true });
    const all = [...taken, ...rest].map((m) => m.payload.n).sort((a, b) => a - b);
    assert.deepEqual(all, Array.from({ length: 12 }, (_, n) => n));
    sub.unsubscribe();
  });

  test('TaskQueue: runs at most `concurrency` handlers, acks on return, nacks with the error message on throw', async () => {
    const queue = new TaskQueue(client, 'js.tasks');
    for (let n = 0; n < 8; n++) await queue.enqueue({ n });
    let active = 0;
    let most = 0;
    const done = new Map();
    const failedOnce = new Set();
    const running = queue.run(async (task) => {
      active += 1;
      most = Math.max(most, active);
      try {
        await sleep(30);
        if (task.payload.n === 5 && !failedOnce.has(5)) {
          failedOnce.add(5);
          throw new Error('smtp down');
        }
        done.set(task.payload.n, task.attempt);
      } finally {
        active -= 1;
      }
    }, { concurrency: 2 });
    await eventually(() => done.size === 8, { what: 'all 8 tasks done' });
    assert.ok(most <= 2, `${most} handlers ran at once`);
    assert.ok(most >= 1);
    assert.equal(done.get(5), 2, 'the failed task came back with attempt 2');
    await eventually(async () => (await committed(broker, 'js.tasks', 'workers')) === 8, { what: 'all tasks committed' });
    queue.stop();
    await within(running, 5_000, 'run() after stop()');

    // The nack carried the error's message: a topic with maxAttempts 1 sends it to the DLQ with it.
    const response = await fetch(`${broker.http}/topics`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ topic: 'js.tasks1', maxAttempts: 1 }),
    });
    assert.ok(response.ok, `POST /topics: ${response.status}`);
    const failing = new TaskQueue(client, 'js.tasks1');
    await failing.enqueue({ n: 1 });
    const run = failing.run(async () => { throw new Error('bad address'); }, { concurrency: 1 });
    const dead = await eventually(async () => (await broker.events('js.tasks1.DLQ').catch(() => []))[0], { what: 'the DLQ entry' });
    assert.equal(dead.headers['x-last-reason'], 'bad address');
    failing.stop();
    await within(run, 5_000, 'run() after stop()');
  });

  test('an ephemeral tail gets new events without acks', async () => {
    const tail = await client.subscribe('js.tail', {});
    await client.publish('js.tail', { n: 1 });
    await client.publish('js.tail', { n: 2 });
    const got = await take(tail, 2);
    assert.deepEqual(got.map((m) => m.payload.n), [1, 2]);
    assert.equal(got[0].group, null);
    tail.unsubscribe();
  });
});

describe('across a broker killed with SIGKILL and restarted', () => {
  const broker = new Broker();
  let client;

  before(async () => { await broker.start(); });
  after(async () => {
    await client?.close();
    await broker.stop();
  });

  test('nothing acked comes back, nothing unacked is lost, publishes made while it was down are stored once', async () => {
    client = new StreamBrokerClient({ url: broker.url, initialBackoffMs: 50, maxBackoffMs: 500 });
    await client.connect();
    const sub = await client.subscribe('js.restart', { group: 'g', from: 'earliest', maxInflight: 4 });
    const tail = await client.subscribe('js.restart', { from: 'earliest' });
    for (let n = 1; n <= 10; n++) await client.publish('js.restart', { n }, { id: `e${n}` });

    for (let i = 0; i < 5; i++) (await take(sub, 1))[0].ack();
    await eventually(async () => (await committed(broker, 'js.restart', 'g')) === 5, { what: 'the group to commit 5' });
    const unacked = await take(sub, 2); // taken, never acked
    assert.deepEqual(unacked.map((m) => m.offset), [6, 7]);
    const tailBefore = await take(tail, 10);
    assert.deepEqual(tailBefore.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);

    await broker.kill('SIGKILL');
    await eventually(() => !client.connected, { what: 'the client to notice' });
    const whileDown = [11, 12, 13].map((n) => client.publish('js.restart', { n }, { id: `e${n}` }));
    await sleep(300);
    await broker.start();

    const stored = await within(Promise.all(whileDown), 15_000, 'the publishes made while the broker was down');
    assert.deepEqual(stored.map((p) => p.offset), [11, 12, 13]);
    assert.ok(client.connections >= 2);

    const after = await take(sub, 8, 15_000, { ack: true });
    const offsets = after.map((m) => m.offset);
    assert.ok(offsets.every((o) => o >= 6), `acked messages came back: ${offsets}`);
    assert.deepEqual([...new Set(offsets)].sort((a, b) => a - b), [6, 7, 8, 9, 10, 11, 12, 13]);
    await eventually(async () => (await committed(broker, 'js.restart', 'g')) === 13, { what: 'the group to commit 13' });

    // The tail resumed after the last offset it had seen: 11..13, nothing twice.
    const tailAfter = await take(tail, 3, 15_000);
    assert.deepEqual(tailAfter.map((m) => m.offset), [11, 12, 13]);

    const events = await broker.events('js.restart');
    assert.deepEqual(events.map((e) => e.id), Array.from({ length: 13 }, (_, i) => `e${i + 1}`));
  });
});
