// Types for streambroker.js (the StreamBroker JavaScript client).

export declare const DEFAULT_URL: 'ws://127.0.0.1:7070/ws';

/** The broker's ERROR codes (SPEC §5) and the client's own. */
export type ErrorCode =
  | 'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'too_large' | 'rate_limited' | 'unavailable' | 'internal'
  | 'closed' | 'timeout' | 'connect_failed' | 'disconnected' | 'already_subscribed';

export declare class StreamBrokerError extends Error {
  readonly code: ErrorCode | string;
  /** Set on `rate_limited`. */
  readonly retryAfterMs?: number;
  constructor(code: string, message?: string, details?: Record<string, unknown>);
}

/** A new UUIDv7 string. */
export declare function uuidv7(): string;

export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

export type StartPosition =
  | 'earliest' | 'latest'
  | number
  | { kind: 'earliest' | 'latest' }
  | { kind: 'offset'; value: number }
  | { kind: 'timestamp'; value: number };

export interface Published {
  topic: string;
  partition: number;
  offset: number;
  id: string;
  /** True when an event with this id was already stored (a retried publish). */
  duplicate: boolean;
}

export interface Envelope<T = JSONValue> {
  id: string;
  ts: number;
  topic: string;
  key?: string;
  partition: number;
  offset: number;
  headers?: Record<string, string>;
  payload: T;
}

export declare class Message<T = JSONValue> {
  readonly topic: string;
  readonly partition: number;
  /** Null for an ephemeral subscription. */
  readonly group: string | null;
  readonly offset: number;
  /** 1 on the first delivery; each timeout, NACK or lost connection adds one. */
  readonly attempt: number;
  readonly id: string;
  readonly ts: number;
  readonly key: string | null;
  readonly headers: Record<string, string>;
  readonly payload: T;
  readonly envelope: Envelope<T>;
  /** The group is done with the message (nothing is sent for an ephemeral subscription). */
  ack(): void;
  /** Redeliver after `delayMs` (or the topic's backoff) with attempt + 1. */
  nack(options?: { reason?: string; delayMs?: number }): void;
}

export interface SubscribeOptions {
  /** Consumer group; none: an ephemeral tail (nothing to ack). */
  group?: string;
  /** Where a new group (or a tail) starts; default `latest`. */
  from?: StartPosition;
  /** The broker's max_inflight (default 32), capped by `window`. */
  maxInflight?: number;
  /** FLOW credits: the most messages delivered and not yet taken; default `maxInflight`. */
  window?: number;
  ackTimeoutMs?: number;
  filter?: { key?: string; header?: [string, string] };
  /** Apply `from` even when the group has a committed position (sent with the first SUBSCRIBE only). */
  reset?: boolean;
}

export declare class Subscription<T = JSONValue> implements AsyncIterableIterator<Message<T>> {
  readonly topic: string;
  readonly group: string | null;
  readonly maxInflight: number;
  readonly window: number;
  /** Messages received and not yet taken. */
  readonly buffered: number;
  next(): Promise<IteratorResult<Message<T>, undefined>>;
  /** Called when a `for await` loop is left early: unsubscribes. */
  return(): Promise<IteratorResult<Message<T>, undefined>>;
  [Symbol.asyncIterator](): this;
  /** The broker stops delivering; a group's unacked messages go back to the group. */
  unsubscribe(): void;
}

export interface ClientOptions {
  /** Default `ws://127.0.0.1:7070/ws`. */
  url?: string;
  /** Sent in an AUTH frame after each connect. */
  token?: string;
  /** Called on each connect and before the credential expires (AUTHED `expires`); wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** First reconnect delay (100 ms); it doubles per failed attempt up to `maxBackoffMs` (10 s), with jitter. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** A connection attempt not open by then is given up and tried again (10 s). */
  connectTimeoutMs?: number;
  /** How long before expiry getToken is called (30 s, or a fifth of the credential's life if less). */
  refreshMarginMs?: number;
  /** A WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: typeof WebSocket;
  /** Broker errors that answer no request, refused credentials and failed connection attempts. */
  onError?: (error: Error) => void;
}

export declare class StreamBrokerClient {
  constructor(options?: ClientOptions);
  readonly url: string;
  /** Open and, with credentials, authenticated. */
  readonly connected: boolean;
  /** Why the last connection attempt failed, or null. */
  readonly lastError: Error | null;
  /** The principal AUTHED named, and when its credential expires (epoch ms or null). */
  readonly principal: string | null;
  readonly expires: number | null;
  /** How many connections opened (and authenticated) so far. */
  readonly connections: number;
  /** Resolves at the first connection; rejects when the credential is refused or the client closes. */
  connect(): Promise<void>;
  publish<T = JSONValue>(
    topic: string, payload: T, options?: { key?: string; headers?: Record<string, string>; id?: string },
  ): Promise<Published>;
  subscribe<T = JSONValue>(topic: string, options?: SubscribeOptions): Promise<Subscription<T>>;
  /** Writes what is queued, closes, stops reconnecting; pending publishes reject with `closed`. */
  close(options?: { graceMs?: number }): Promise<void>;
}

export declare class TaskQueue<T = JSONValue> {
  constructor(client: StreamBrokerClient, topic: string, options?: { group?: string });
  readonly client: StreamBrokerClient;
  readonly topic: string;
  /** Default `workers`. */
  readonly group: string;
  enqueue(task: T, options?: { key?: string; headers?: Record<string, string>; id?: string }): Promise<Published>;
  /** Acks when `handler` returns, NACKs with the error's message when it throws. Resolves after `stop()`
   * (or `signal` aborts, or the client closes) once the running handlers have finished. */
  run(handler: (task: Message<T>) => unknown | Promise<unknown>, options?: { concurrency?: number; signal?: AbortSignal }): Promise<void>;
  stop(): void;
}
