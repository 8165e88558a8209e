// The JavaScript client against brokers with BUS_AUTH=token and BUS_AUTH=jwt: AUTH after each
// connect, refusals, and the getToken hook on reconnect and before expiry.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { StreamBrokerClient, StreamBrokerError } from '../../clients/js/streambroker.js';
import { Broker, eventually, sha256Hex, sleep, within } from './broker.mjs';

const tokenA = 'js-test-token-a';
const tokenB = 'js-test-token-b';
const grants = { publish: ['>'], subscribe: ['>'], admin: true };

async function nextMessage(subscription, ms = 10_000) {
  const { value, done } = await within(subscription.next(), ms, 'a message');
  assert.equal(done, false);
  return value;
}

describe('BUS_AUTH=token', () => {
  const broker = new Broker();
  const bearer = { authorization: `Bearer ${tokenA}` };
  const clients = [];
  const track = (client) => { clients.push(client); return client; };

  before(async () => {
    const file = broker.file('tokens.json', JSON.stringify({
      tokens: [{ name: 'n1', sha256: sha256Hex(tokenA), ...grants }, { name: 'n2', sha256: sha256Hex(tokenB), ...grants }],
    }));
    broker.env = { BUS_AUTH: 'token', BUS_TOKENS_FILE: file };
    await broker.start();
  });

  after(async () => {
    for (const client of clients) await client.close();
    await broker.stop();
  });

  test('without a token, publish and subscribe are refused as unauthorized and nothing is stored', async () => {
    const client = track(new StreamBrokerClient({ url: broker.url }));
    await client.connect();
    await assert.rejects(client.publish('js.auth', { n: 0 }), (error) => error instanceof StreamBrokerError && error.code === 'unauthorized');
    await assert.rejects(client.subscribe('js.auth', { group: 'g' }), (error) => error.code === 'unauthorized');
    const response = await fetch(`${broker.http}/topics/js.auth/events?partition=0&from=1&limit=10`, { headers: bearer });
    if (response.ok) assert.deepEqual((await response.json()).events, []);
    else assert.equal(response.status, 404);
  });

  test('a wrong token: connect() rejects with unauthorized', async () => {
    const client = track(new StreamBrokerClient({ url: broker.url, token: 'not-a-token', initialBackoffMs: 200 }));
    await assert.rejects(within(client.connect(), 10_000, 'connect'), (error) => error.code === 'unauthorized');
    assert.equal(client.connected, false);
  });

  test('with a token: AUTHED names the principal, publishes carry it, subscriptions deliver', async () => {
    const client = track(new StreamBrokerClient({ url: broker.url, token: tokenA }));
    await client.connect();
    assert.equal(client.principal, 'n1');
    assert.equal(client.expires, null);
    const sub = await client.subscribe('js.auth', { group: 'g', from: 'earliest' });
    const stored = await client.publish('js.auth', { n: 1 });
    const m = await nextMessage(sub);
    assert.equal(m.offset, stored.offset);
    assert.equal(m.headers['x-bus-principal'], 'n1');
    m.ack();
    sub.unsubscribe();
  });

  test('getToken is called on each connect: after a SIGKILL and restart the client authenticates with the fresh token', async () => {
    const handed = [];
    const client = track(new StreamBrokerClient({
      url: broker.url,
      initialBackoffMs: 50,
      maxBackoffMs: 500,
      getToken: async () => {
        const token = handed.length === 0 ? tokenA : tokenB;
        handed.push(token);
        return token;
      },
    }));
    await client.connect();
    assert.equal(client.principal, 'n1');
    const sub = await client.subscribe('js.auth.re', { group: 'g', from: 'earliest' });
    const first = await client.publish('js.auth.re', { n: 1 });
    (await nextMessage(sub)).ack();
    await eventually(async () => {
      const body = await broker.get('/topics/js.auth.re/offsets', bearer);
      return body.groups.find((g) => g.group === 'g')?.partitions[0].committed === first.offset;
    }, { what: 'the ack to commit' });

    await broker.kill('SIGKILL');
    await eventually(() => !client.connected, { what: 'the client to notice' });
    await broker.start();
    await eventually(() => client.connected, { timeoutMs: 15_000, what: 'the reconnect' });
    assert.ok(handed.length >= 2, `getToken called ${handed.length} times`);
    assert.equal(client.principal, 'n2');

    const second = await client.publish('js.auth.re', { n: 2 });
    assert.equal(second.offset, first.offset + 1);
    const m = await nextMessage(sub, 15_000);
    assert.equal(m.offset, second.offset, 'the subscription was not resumed after its committed position');
    assert.equal(m.headers['x-bus-principal'], 'n2');
    m.ack();
  });
});

function jwt(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

describe('BUS_AUTH=jwt', () => {
  const secret = 'js-test-secret-js-test-secret-32b';
  const broker = new Broker({ env: { BUS_AUTH: 'jwt', BUS_JWT_SECRET: secret } });
  let client;

  before(async () => { await broker.start(); });
  after(async () => {
    await client?.close();
    await broker.stop();
  });

  test('getToken is called before AUTHED.expires and the fresh token keeps the same connection open', async () => {
    let calls = 0;
    const fresh = () => {
      calls += 1;
      return jwt(secret, { sub: 'jo', exp: Math.floor(Date.now() / 1000) + 6, bus: grants });
    };
    client = new StreamBrokerClient({ url: broker.url, getToken: fresh, refreshMarginMs: 1500 });
    await client.connect();
    assert.equal(client.principal, 'jo');
    assert.ok(client.expires > Date.now(), 'AUTHED carried no expiry');
    const firstExpiry = client.expires;
    // Past the first token's expiry: without a refresh the broker closes the connection (1008).
    await sleep(firstExpiry - Date.now() + 1500);
    assert.ok(calls >= 2, `getToken called ${calls} times`);
    assert.ok(client.expires > firstExpiry, 'no fresh AUTHED');
    assert.equal(client.connections, 1, 'the connection was closed and opened again');
    const stored = await within(client.publish('js.jwt', { n: 1 }), 5_000, 'a publish after the first expiry');
    assert.equal(stored.duplicate, false);
    assert.equal(client.connections, 1);
  });
});
