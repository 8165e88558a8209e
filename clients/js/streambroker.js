// StreamBroker JavaScript client (SPEC §5, §6, §12, §13): one ES module, no build step, no
// dependency. Runs in browsers and in Node.js >= 20 (Node 20 needs `--experimental-websocket`
// for the global WebSocket; 22 and later have it).
//
//   import { StreamBrokerClient } from './streambroker.js';
//   const client = new StreamBrokerClient({ url: 'ws://127.0.0.1:7070/ws' });
//   await client.connect();
//   await client.publish('orders.created', { n: 1 }, { key: 'cust-7' });
//   const sub = await client.subscribe('orders.created', { group: 'billing', from: 'earliest' });
//   for await (const m of sub) { console.log(m.payload); m.ack(); }
//
// When the connection drops, the client reconnects with exponential backoff and jitter, sends
// again every unconfirmed publish (same id: the broker stores it once and answers
// `duplicate: true`) and every subscription. A group resumes at its committed position; an
// ephemeral tail resumes after the last offset it received.

export const DEFAULT_URL = 'ws://127.0.0.1:7070/ws';

/** An error from the broker (`code` is its ERROR code) or from the client (`closed`, `timeout`). */
export class StreamBrokerError extends Error {
  constructor(code, message, details = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'StreamBrokerError';
    this.code = code;
    Object.assign(this, details);
  }
}

/** A UUIDv7 (time-ordered; the broker's dedup index grows at its end). */
export function uuidv7() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function startPosition(from) {
  if (from == null) return undefined;
  if (typeof from === 'string') return { kind: from };
  if (typeof from === 'number') return { kind: 'offset', value: from };
  return from;
}

/** One delivered message. `ack()` / `nack()` do nothing for an ephemeral subscription. */
export class Message {
  constructor(client, frame, generation) {
    const envelope = frame.envelope ?? {};
    this.topic = frame.topic;
    this.partition = frame.partition;
    this.group = frame.group ?? null;
    this.offset = frame.offset;
    this.attempt = frame.attempt ?? 1;
    this.id = envelope.id;
    this.ts = envelope.ts;
    this.key = envelope.key ?? null;
    this.headers = envelope.headers ?? {};
    this.payload = envelope.payload;
    this.envelope = envelope;
    Object.defineProperty(this, '_client', { value: client });
    Object.defineProperty(this, '_generation', { value: generation });
  }

  /** The group is done with the message. Not sent when the connection it came on has dropped:
   * the broker then delivers it again. */
  ack() {
    if (this.group == null) return;
    this._client._sendOn(this._generation, {
      type: 'ACK', topic: this.topic, partition: this.partition, group: this.group, offset: this.offset,
    });
  }

  /** Delivers the message again after `delayMs` (or the topic's backoff), with attempt + 1,
   * until the topic's maxAttempts sends it to `${topic}.DLQ`. */
  nack({ reason, delayMs } = {}) {
    if (this.group == null) return;
    const frame = { type: 'NACK', topic: this.topic, partition: this.partition, group: this.group, offset: this.offset };
    if (reason != null) frame.reason = String(reason).slice(0, 1000);
    if (delayMs != null) frame.delay_ms = Math.min(Math.max(0, Math.round(delayMs)), 86_400_000);
    this._client._sendOn(this._generation, frame);
  }
}

/**
 * The messages of one subscription, for `for await (const m of sub)`. Taking a message grants
 * the broker a credit, so a consumer that stops holds at most `window` messages.
 * Iterate it from one loop at a time.
 */
export class Subscription {
  constructor(client, rid, topic, options) {
    this._client = client;
    this.rid = rid;
    this.topic = topic;
    this.group = options.group ?? null;
    this.from = startPosition(options.from);
    this.maxInflight = Math.max(1, Math.floor(options.maxInflight ?? 32));
    this.window = Math.max(1, Math.floor(options.window ?? this.maxInflight));
    this.ackTimeoutMs = options.ackTimeoutMs;
    this.filter = options.filter;
    this.reset = options.reset ?? false;
    this._buffer = [];
    this._waiters = [];
    this._lastSeen = new Map(); // partition -> last offset received (ephemeral resume)
    this._owed = 0; // messages taken on this connection and not yet granted back
    this._flowing = false; // the first FLOW of this connection was sent
    this._ready = null; // {resolve, reject} until the first SUBSCRIBED
    this._sentReset = false;
    this._end = null; // {error} once ended
  }

  get creditBatch() { return Math.max(1, Math.floor(this.window / 4)); }

  /** Messages received and not yet taken. */
  get buffered() { return this._buffer.length; }

  _subscribeFrame() {
    // The first FLOW goes after SUBSCRIBED, and the broker may send up to max_inflight before it:
    // capped by the window, so that what arrives never exceeds the window.
    const frame = { type: 'SUBSCRIBE', topic: this.topic, max_inflight: Math.min(this.maxInflight, this.window), rid: this.rid };
    if (this.group != null) frame.group = this.group;
    let from = this.from;
    if (this.group == null && this._lastSeen.size > 0) {
      from = { kind: 'offset', value: Math.min(...this._lastSeen.values()) + 1 };
    }
    if (from) frame.from = from;
    if (this.ackTimeoutMs != null) frame.ack_timeout_ms = this.ackTimeoutMs;
    if (this.filter) frame.filter = this.filter;
    // `reset` moves the group once, at the first subscribe, not again after each reconnect.
    if (this.reset && !this._sentReset) frame.reset = true;
    return frame;
  }

  _flowFrame(credits) {
    const frame = { type: 'FLOW', topic: this.topic, credits, rid: `f${this.rid}` };
    if (this.group != null) frame.group = this.group;
    return frame;
  }

  /** A connection opened: credits start again. */
  _opening() {
    this._owed = 0;
    this._flowing = false;
    if (this.group != null) this._buffer = [];
  }

  /** SUBSCRIBED arrived: the first FLOW goes now (a FLOW that overtakes the broker's handling of
   * the SUBSCRIBE is not applied). The broker counts what it sent before it against it. */
  _subscribed() {
    this._sentReset = true;
    this._flowing = true;
    const frames = [this._flowFrame(Math.max(0, this.window - this._buffer.length))];
    if (this._owed >= this.creditBatch) frames.push(this._grantOwed());
    return frames;
  }

  _grantOwed() {
    const credits = this._owed;
    this._owed = 0;
    return this._flowFrame(credits);
  }

  _accept(message) {
    if (this._end) return;
    if (this.group == null) {
      const last = this._lastSeen.get(message.partition);
      if (last != null && message.offset <= last) return;
      this._lastSeen.set(message.partition, message.offset);
    }
    const waiter = this._waiters.shift();
    if (waiter) {
      this._taken();
      waiter.resolve({ value: message, done: false });
    } else {
      this._buffer.push(message);
    }
  }

  _taken() {
    this._owed += 1;
    if (this._flowing && this._owed >= this.creditBatch) this._client._send(this._grantOwed());
  }

  _finish(error) {
    if (this._end) return;
    this._end = { error };
    if (this._ready) {
      this._ready.reject(error ?? new StreamBrokerError('closed', 'the client closed'));
      this._ready = null;
    }
    for (const waiter of this._waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  /** The next message; `{done: true}` after `unsubscribe()` or `close()` and the buffered messages. */
  next() {
    if (this._buffer.length > 0) {
      const message = this._buffer.shift();
      this._taken();
      return Promise.resolve({ value: message, done: false });
    }
    if (this._end) {
      if (this._end.error) return Promise.reject(this._end.error);
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Wakes a waiting `next()` with `{done: true}` without ending the subscription. */
  _interrupt() {
    for (const waiter of this._waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
  }

  /** Leaving a `for await` loop early unsubscribes. */
  return() {
    this.unsubscribe();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() { return this; }

  /** The broker stops delivering; a group's unacked messages go back to the group. */
  unsubscribe() {
    if (this._end) return;
    const frame = { type: 'UNSUBSCRIBE', topic: this.topic };
    if (this.group != null) frame.group = this.group;
    this._client._send(frame);
    this._client._subscriptions.delete(this.rid);
    this._finish(null);
  }
}

/**
 * A connection to a StreamBroker. Options: `url` (default `ws://127.0.0.1:7070/ws`), `token`,
 * `getToken` (async, called on each connect and before the credential expires), `initialBackoffMs`
 * (100), `maxBackoffMs` (10000), `connectTimeoutMs` (10000), `refreshMarginMs` (30000),
 * `WebSocket` (a constructor; default the global one), `onError` (broker errors that answer no
 * request, and failed connection attempts).
 */
export class StreamBrokerClient {
  constructor(options = {}) {
    this.url = options.url ?? DEFAULT_URL;
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 10_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.refreshMarginMs = options.refreshMarginMs ?? 30_000;
    this.onError = options.onError ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new Error('no WebSocket: pass options.WebSocket, or run Node 20 with --experimental-websocket (22+ has it)');
    }
    this._socket = null;
    this._generation = 0;
    this._ready = false; // open and, with credentials, authenticated
    this._closed = false;
    this._started = false;
    this._failures = 0;
    this._nextRid = 0;
    this._publishes = new Map(); // rid -> {frame, resolve, reject}
    this._subscriptions = new Map(); // rid -> Subscription
    this._connectWaiters = [];
    this._timers = new Set();
    this._authRid = null;
    /** Why the last connection attempt failed, or null. */
    this.lastError = null;
    /** The authenticated principal and when its credential expires (epoch ms or null). */
    this.principal = null;
    this.expires = null;
    /** How many times a connection opened (and authenticated). */
    this.connections = 0;
  }

  get connected() { return this._ready; }

  /** Starts the connection loop; resolves at the first connection (after AUTHED when a token is
   * used). Rejects when the broker refuses the credential or the client is closed. */
  connect() {
    if (this._closed) return Promise.reject(new StreamBrokerError('closed', 'the client is closed'));
    if (this._ready) return Promise.resolve();
    const waiting = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._started) {
      this._started = true;
      this._open();
    }
    return waiting;
  }

  /**
   * Publishes `payload` (any JSON value) and resolves with the broker's PUBLISHED fields
   * `{topic, partition, offset, id, duplicate}`. Many may be in flight. The event id (given, or a
   * new UUIDv7) goes with every retry, so a publish sent again after a reconnect is stored once.
   */
  publish(topic, payload, { key, headers, id } = {}) {
    if (this._closed) return Promise.reject(new StreamBrokerError('closed', 'the client is closed'));
    if (payload === undefined) return Promise.reject(new TypeError('publish needs a payload (any JSON value)'));
    const rid = `p${++this._nextRid}`;
    const frame = { type: 'PUBLISH', topic, payload, id: id ?? uuidv7(), rid };
    if (key != null) frame.key = key;
    if (headers && Object.keys(headers).length > 0) frame.headers = headers;
    const text = JSON.stringify(frame);
    return new Promise((resolve, reject) => {
      this._publishes.set(rid, { text, resolve, reject });
      if (this._ready) this._socket.send(text);
      this._ensureStarted();
    });
  }

  /**
   * Subscribes and resolves with a Subscription once the broker answers SUBSCRIBED.
   * Options: `group` (none: an ephemeral tail, nothing to ack), `from` (`'earliest'`, `'latest'`,
   * a number = first offset, or `{kind, value}`), `maxInflight` (32: the broker's max_inflight),
   * `window` (credits: messages delivered and not yet taken; default maxInflight),
   * `ackTimeoutMs`, `filter` (`{key, header: [name, value]}`), `reset`.
   */
  async subscribe(topic, options = {}) {
    if (this._closed) throw new StreamBrokerError('closed', 'the client is closed');
    for (const s of this._subscriptions.values()) {
      if (s.topic === topic && s.group === (options.group ?? null)) {
        throw new StreamBrokerError('already_subscribed', `topic '${topic}' group '${s.group ?? '(ephemeral)'}'`);
      }
    }
    const subscription = new Subscription(this, `s${++this._nextRid}`, topic, options);
    const ready = new Promise((resolve, reject) => { subscription._ready = { resolve, reject }; });
    this._subscriptions.set(subscription.rid, subscription);
    if (this._ready) {
      subscription._opening();
      this._send(subscription._subscribeFrame());
    }
    this._ensureStarted();
    await ready;
    return subscription;
  }

  /** Stops reconnecting and closes the connection after what is queued (acks included) is
   * written. Unconfirmed publishes reject with code `closed`; subscriptions end after their
   * buffered messages. Resolves when the socket has closed (or after `graceMs`). */
  close({ graceMs = 2000 } = {}) {
    if (this._closed) return Promise.resolve();
    this._closed = true;
    this._ready = false;
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    const error = new StreamBrokerError('closed', 'the client closed');
    for (const pending of this._publishes.values()) pending.reject(error);
    this._publishes.clear();
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(error);
    for (const s of this._subscriptions.values()) s._finish(null);
    this._subscriptions.clear();
    const socket = this._socket;
    this._socket = null;
    if (!socket || socket.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, graceMs);
      socket.addEventListener('close', () => { clearTimeout(timer); resolve(); });
      try { socket.close(1000, 'client closed'); } catch { resolve(); }
    });
  }

  // Internals.

  _ensureStarted() {
    if (!this._started && !this._closed) {
      this._started = true;
      this._open();
    }
  }

  _later(ms, fn) {
    const timer = setTimeout(() => { this._timers.delete(timer); fn(); }, ms);
    this._timers.add(timer);
    return timer;
  }

  _report(error) {
    this.lastError = error;
    if (this.onError) {
      try { this.onError(error); } catch { /* the hook's own failure is not ours to handle */ }
    }
  }

  _open() {
    if (this._closed) return;
    const generation = ++this._generation;
    let socket;
    try {
      socket = new this._WebSocket(this.url);
    } catch (error) {
      this._report(error);
      this._retry();
      return;
    }
    this._socket = socket;
    let opened = false;
    const timeout = this._later(this.connectTimeoutMs, () => {
      if (!opened && this._generation === generation) {
        this._report(new StreamBrokerError('timeout', `no connection within ${this.connectTimeoutMs} ms`));
        try { socket.close(); } catch { /* closing a socket that never opened */ }
        this._lost(generation);
      }
    });
    socket.addEventListener('open', () => {
      opened = true;
      clearTimeout(timeout);
      this._timers.delete(timeout);
      if (this._generation !== generation || this._closed) return;
      this._authenticate(generation).catch((error) => this._report(error));
    });
    socket.addEventListener('message', (event) => {
      if (this._generation !== generation || typeof event.data !== 'string') return;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      this._handle(frame, generation);
    });
    socket.addEventListener('error', () => {
      if (this._generation === generation && !opened) this._report(new StreamBrokerError('connect_failed', `could not connect to ${this.url}`));
    });
    socket.addEventListener('close', (event) => {
      if (this._generation === generation && opened && !this._closed) {
        this.lastError = new StreamBrokerError('disconnected', `connection closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`);
      }
      this._lost(generation);
    });
  }

  async _credential() {
    if (this.getToken) return await this.getToken();
    return this.token;
  }

  async _authenticate(generation) {
    let token;
    try {
      token = await this._credential();
    } catch (error) {
      this._report(error);
      try { this._socket?.close(); } catch { /* already closing */ }
      return;
    }
    if (this._generation !== generation || this._closed) return;
    if (token == null) {
      this._established(generation);
      return;
    }
    this._authRid = `a${++this._nextRid}`;
    this._socket.send(JSON.stringify({ type: 'AUTH', token, rid: this._authRid }));
  }

  _authed(frame, generation) {
    this.principal = frame.principal ?? null;
    this.expires = frame.expires ?? null;
    if (this.getToken && this.expires != null) {
      const left = this.expires - Date.now();
      const delay = Math.max(0, left - Math.min(this.refreshMarginMs, left / 5));
      this._later(delay, () => this._refresh(generation));
    }
    if (!this._ready) this._established(generation);
  }

  /** Sends a fresh credential on the open connection before the current one expires. */
  async _refresh(generation) {
    if (this._generation !== generation || !this._ready || this._closed) return;
    let token;
    try {
      token = await this.getToken();
    } catch (error) {
      this._report(error);
      this._later(1000, () => this._refresh(generation));
      return;
    }
    if (this._generation !== generation || !this._ready) return;
    this._authRid = `a${++this._nextRid}`;
    this._socket.send(JSON.stringify({ type: 'AUTH', token, rid: this._authRid }));
  }

  /** Open (and authenticated): unconfirmed publishes and every subscription go out again. */
  _established(generation) {
    this._ready = true;
    this._failures = 0;
    this.connections += 1;
    this.lastError = null;
    const publishes = [...this._publishes.keys()].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    for (const rid of publishes) this._socket.send(this._publishes.get(rid).text);
    for (const s of this._subscriptions.values()) {
      s._opening();
      this._send(s._subscribeFrame());
    }
    for (const waiter of this._connectWaiters.splice(0)) waiter.resolve();
  }

  _lost(generation) {
    if (this._generation !== generation) return;
    this._generation += 1; // later events of the old socket are ignored
    this._ready = false;
    this._socket = null;
    this._authRid = null;
    if (this._closed) return;
    for (const s of this._subscriptions.values()) s._opening();
    this._retry();
  }

  _retry() {
    const exponent = Math.min(this._failures, 20);
    this._failures += 1;
    const ceiling = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** exponent);
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    this._later(delay, () => this._open());
  }

  _send(frame) {
    if (!this._ready || !this._socket) return false;
    this._socket.send(JSON.stringify(frame));
    return true;
  }

  /** Sends a frame only on the connection a message came on (acks for a dropped one are moot). */
  _sendOn(generation, frame) {
    if (this._generation === generation) this._send(frame);
  }

  _handle(frame, generation) {
    switch (frame.type) {
      case 'PUBLISHED': {
        const pending = this._publishes.get(frame.rid);
        if (!pending) return;
        this._publishes.delete(frame.rid);
        pending.resolve({
          topic: frame.topic, partition: frame.partition, offset: frame.offset, id: frame.id, duplicate: frame.duplicate === true,
        });
        return;
      }
      case 'MESSAGE': {
        const group = frame.group ?? null;
        for (const s of this._subscriptions.values()) {
          if (s.topic === frame.topic && s.group === group) {
            s._accept(new Message(this, frame, generation));
            return;
          }
        }
        return;
      }
      case 'SUBSCRIBED': {
        const s = this._subscriptions.get(frame.rid);
        if (!s || s._end) return;
        for (const flow of s._subscribed()) this._send(flow);
        if (s._ready) {
          s._ready.resolve();
          s._ready = null;
        }
        return;
      }
      case 'AUTHED':
        if (frame.rid == null || frame.rid === this._authRid) this._authed(frame, generation);
        return;
      case 'ERROR':
        this._handleError(frame, generation);
        return;
      default:
    }
  }

  _handleError(frame, generation) {
    const error = new StreamBrokerError(frame.code ?? 'internal', frame.message ?? '',
      frame.retry_after_ms != null ? { retryAfterMs: frame.retry_after_ms } : {});
    const rid = frame.rid ?? '';
    if (rid.startsWith('p') && this._publishes.has(rid)) {
      this._publishes.get(rid).reject(error);
      this._publishes.delete(rid);
    } else if (rid.startsWith('s') && this._subscriptions.has(rid)) {
      const s = this._subscriptions.get(rid);
      if (!s._ready && error.code === 'unavailable') {
        // Sent again after a reconnect while the broker's store is not back yet: try again.
        this._later(this.initialBackoffMs * 5, () => {
          if (this._generation === generation && this._subscriptions.get(rid) === s) this._send(s._subscribeFrame());
        });
        return;
      }
      this._subscriptions.delete(rid);
      s._finish(error);
    } else if (rid.startsWith('f')) {
      // A FLOW for a subscription the broker no longer has (its SUBSCRIBE failed): nothing to do.
    } else if (rid.startsWith('a') && rid === this._authRid) {
      this._report(error);
      if (!this._ready) {
        // The credential was refused: whoever waits for the connection hears why; the loop
        // tries again with backoff (getToken may give a better one).
        for (const waiter of this._connectWaiters.splice(0)) waiter.reject(error);
        try { this._socket?.close(); } catch { /* already closing */ }
      }
    } else {
      this._report(error);
    }
  }
}

/**
 * A work queue on a topic (the sketch's TaskQueue): producers `enqueue()` tasks, workers in one
 * group (default `workers`) `run()` a handler on each: acked when it returns, nacked with the
 * error's message when it throws (redelivered until the topic's maxAttempts sends it to the DLQ).
 */
export class TaskQueue {
  constructor(client, topic, { group = 'workers' } = {}) {
    this.client = client;
    this.topic = topic;
    this.group = group;
    this._subscription = null;
  }

  /** Adds a task (any JSON value) and resolves when the broker has stored it. */
  enqueue(task, { key, headers, id } = {}) {
    return this.client.publish(this.topic, task, { key, headers, id });
  }

  /**
   * Runs `handler(message)` on each task, at most `concurrency` (16) at a time, until `stop()`,
   * `signal` aborts or the client closes; resolves when the running handlers have finished.
   * A new group starts at the earliest task still stored, so tasks enqueued before the first
   * worker are not skipped.
   */
  async run(handler, { concurrency = 16, signal } = {}) {
    const width = Math.max(1, Math.floor(concurrency));
    this._stopping = false;
    const tasks = await this.client.subscribe(this.topic, { group: this.group, from: 'earliest', maxInflight: width });
    this._subscription = tasks;
    const onAbort = () => this.stop();
    if (signal) {
      if (signal.aborted) this.stop();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
    const running = new Set();
    try {
      while (!this._stopping) {
        if (running.size >= width) {
          await Promise.race(running);
          continue;
        }
        const { value: task, done } = await tasks.next();
        if (done || this._stopping) {
          // A task taken as stop() came goes back to the group untouched (redelivered).
          break;
        }
        const work = (async () => {
          try {
            await handler(task);
            task.ack();
          } catch (error) {
            task.nack({ reason: error instanceof Error ? error.message : String(error) });
          }
        })();
        running.add(work);
        work.finally(() => running.delete(work));
      }
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort);
      // The running handlers finish and ack before the group is left.
      await Promise.allSettled(running);
      tasks.unsubscribe();
      this._subscription = null;
    }
  }

  /** Stops `run()`: no new task is taken; the running ones finish and are acked or nacked,
   * then the group is left. */
  stop() {
    this._stopping = true;
    this._subscription?._interrupt();
  }
}
