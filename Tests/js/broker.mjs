// Starts and stops real broker processes for the JavaScript client's tests. The binary comes
// from STREAM_BROKER_BIN; each broker gets a free port on 127.0.0.1 and its own data directory
// (the SQLite store).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function brokerBinary() {
  const bin = process.env.STREAM_BROKER_BIN;
  if (!bin) throw new Error('set STREAM_BROKER_BIN to the stream-broker binary');
  return bin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `condition()` is truthy (it may be async), or throws after `timeoutMs`. */
export async function eventually(condition, { timeoutMs = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Rejects when `promise` does not settle within `ms`. */
export function within(promise, ms, what = 'promise') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function sha256Hex(text) {
  return createHash('sha256').update(text).digest('hex');
}

/** One broker process; `start()` again after `kill()` reuses its port and data directory. */
export class Broker {
  constructor({ env = {} } = {}) {
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), 'sb-js-'));
    this.port = null;
    this.process = null;
    this.log = [];
  }

  get url() { return `ws://127.0.0.1:${this.port}/ws`; }
  get http() { return `http://127.0.0.1:${this.port}`; }

  /** Writes a file in the broker's directory and returns its path. */
  file(name, text) {
    const path = join(this.dir, name);
    writeFileSync(path, text);
    return path;
  }

  async start() {
    if (this.port == null) this.port = await freePort();
    const child = spawn(brokerBinary(), [], {
      env: {
        ...process.env,
        ...this.env,
        BUS_PORT: String(this.port),
        BUS_HOST: '127.0.0.1',
        BUS_DATA_DIR: join(this.dir, 'data'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    this.process = child;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    this.exited = exited;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode != null) throw new Error(`broker exited with ${child.exitCode}:\n${this.log.join('')}`);
      try {
        const response = await fetch(`${this.http}/readyz`);
        if (response.ok) return this;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`broker not ready within 20 s:\n${this.log.join('')}`);
      await sleep(50);
    }
  }

  /** Kills the process (SIGKILL by default) and waits for it to exit. */
  async kill(signal = 'SIGKILL') {
    const child = this.process;
    if (!child || child.exitCode != null || child.signalCode != null) return;
    child.kill(signal);
    await this.exited;
    this.process = null;
  }

  async stop() {
    await this.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  async get(path, headers = {}) {
    const response = await fetch(`${this.http}${path}`, { headers });
    const body = await response.json();
    if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Every stored event of a one-partition topic, from offset 1. */
  async events(topic, headers = {}) {
    const body = await this.get(`/topics/${encodeURIComponent(topic)}/events?partition=0&from=1&limit=1000`, headers);
    return body.events;
  }
}
