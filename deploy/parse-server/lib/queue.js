'use strict';
// Parse Server's push work items → RabbitMQ `<prefix>.parse`, confirmed, for the pushgw fleet (route C).
//
// Parse calls publish(channel, message) without awaiting or catching it, so publish never throws: every
// item is kept (in memory, and in the spool file when `spoolDir` is set) until RabbitMQ confirmed it,
// and retried with backoff after a nack, a return (no `<prefix>.parse` queue yet) or a lost connection.

const { EventEmitter } = require('events');
const amqp = require('amqplib');
const { Spool } = require('./spool');

const DEFAULTS = { prefix: 'pushgw', minBackoffMs: 200, maxBackoffMs: 30000, maxInFlight: 256 };

function redactUrl(url) {
  return String(url).replace(/\/\/([^:/@]*):[^@]*@/, '//$1:***@');
}

function messageIdOf(item) {
  try {
    const workItem = JSON.parse(item.message);
    return `${workItem.pushStatus.objectId}:${workItem.query.skip || 0}`;
  } catch (_) {
    return `seq:${item.seq}`; // never from Parse; keeps returns matchable
  }
}

function backoffMs(failures, options) {
  const base = Math.min(options.maxBackoffMs, options.minBackoffMs * 2 ** Math.max(0, failures - 1));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

/** One pending retry at a time; its delay grows with every failure since the last `succeeded()`. */
class Backoff {
  constructor(options, run) {
    this.options = options;
    this.run = run;
    this.failures = 0;
    this.timer = null;
  }

  get pending() {
    return this.timer !== null;
  }

  /** Schedules `run` after the next delay; returns that delay, or null if one is already pending. */
  schedule() {
    if (this.timer) return null;
    this.failures += 1;
    const delay = backoffMs(this.failures, this.options);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run();
    }, delay);
    this.timer.unref();
    return delay;
  }

  succeeded() {
    this.failures = 0;
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = null;
  }
}

class PushgwQueue {
  constructor(options = {}) {
    if (!options.url) throw new Error('pushgwQueueAdapter: `url` (amqp://…) is required');
    this.options = { ...DEFAULTS, ...options };
    this.routingKey = `${this.options.prefix}.parse`;
    this.logger = options.logger || console;
    this.items = []; // {seq, channel, message, messageId, inFlight, attempt, returned}, oldest first
    this.nextSeq = 1;
    this.inFlight = 0;
    this.connection = null;
    this.channel = null;
    this.connecting = false;
    this.blocked = false;
    this.retry = new Backoff(this.options, () => this._pump());
    this.reconnect = new Backoff(this.options, () => this._connect());
    this.closed = false;
    this.flushWaiters = [];
    this.spool = this.options.spoolDir ? new Spool(this.options.spoolDir, this.routingKey) : null;
    if (this.spool) this._replaySpool();
  }

  /** Number of items not yet confirmed by RabbitMQ. */
  get pending() {
    return this.items.length;
  }

  /** Parse's publisher interface. Never throws, never rejects. */
  publish(channel, message) {
    try {
      const text = typeof message === 'string' ? message : JSON.stringify(message);
      const item = { seq: this.nextSeq++, channel: String(channel), message: text };
      this._spoolAppend(item);
      this._keep(item);
      this._pump();
    } catch (error) {
      this._log('error', `could not keep a work item: ${error && error.message}`);
    }
  }

  /** Connects (again) if needed; called by the adapter when Parse creates its publisher. */
  start() {
    if (!this.closed) this._connect();
    return this;
  }

  /** Resolves once every item is confirmed; rejects after `timeoutMs` with the number still pending. */
  flush({ timeoutMs = 10000 } = {}) {
    if (this.items.length === 0) return Promise.resolve();
    this._pump();
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        this.flushWaiters = this.flushWaiters.filter(other => other !== waiter);
        reject(new Error(`pushgw queue: ${this.items.length} work items not confirmed after ${timeoutMs} ms`));
      }, timeoutMs);
      this.flushWaiters.push(waiter);
    });
  }

  /** Stops retrying and closes the connection; unconfirmed items stay in the spool file, if any. */
  async close() {
    this.closed = true;
    this.retry.cancel();
    this.reconnect.cancel();
    const { channel, connection } = this;
    this.channel = null;
    this.connection = null;
    if (channel) await channel.close().catch(() => undefined);
    if (connection) await connection.close().catch(() => undefined);
  }

  // -- keeping ------------------------------------------------------------------------------------
  _keep(item) {
    this.items.push({ ...item, messageId: messageIdOf(item), inFlight: false, attempt: 0, returned: false });
  }

  _replaySpool() {
    for (const item of this.spool.replay()) {
      this._keep(item);
      this.nextSeq = Math.max(this.nextSeq, item.seq + 1);
    }
    this.spool.compact(this._spooled());
    if (this.items.length) this._log('info', `replaying ${this.items.length} work items from the spool`);
  }

  _spooled() {
    return this.items.map(({ seq, channel, message }) => ({ seq, channel, message }));
  }

  _spoolAppend(item) {
    if (!this.spool) return;
    try {
      this.spool.append(item);
    } catch (error) {
      this._log('error', `spool write failed (kept in memory only): ${error.message}`);
    }
  }

  _spoolConfirm(seq) {
    if (!this.spool) return;
    try {
      this.spool.confirm(seq, this._spooled());
    } catch (error) {
      this._log('error', `spool update failed: ${error.message}`);
    }
  }

  // -- sending ------------------------------------------------------------------------------------
  _pump() {
    if (this.closed) return;
    if (!this.channel) {
      this._connect();
      return;
    }
    if (this.retry.pending) return;
    for (const item of this.items) {
      if (this.inFlight >= this.options.maxInFlight || this.blocked || !this.channel) break;
      if (!item.inFlight) this._send(item);
    }
  }

  _send(item) {
    const channel = this.channel;
    const attempt = ++item.attempt;
    item.inFlight = true;
    item.returned = false;
    this.inFlight += 1;
    const options = {
      persistent: true,
      contentType: 'application/json',
      messageId: item.messageId,
      headers: { 'x-parse-channel': item.channel },
      mandatory: true,
    };
    let writable = true;
    try {
      writable = channel.publish('', this.routingKey, Buffer.from(item.message), options, error =>
        this._settle(item, attempt, error),
      );
    } catch (error) {
      this._settle(item, attempt, error);
      return;
    }
    if (writable === false) {
      this.blocked = true;
      channel.once('drain', () => {
        this.blocked = false;
        this._pump();
      });
    }
  }

  _settle(item, attempt, error) {
    if (item.attempt !== attempt || !item.inFlight) return; // a stale callback of a dead channel
    item.inFlight = false;
    this.inFlight -= 1;
    if (error || item.returned) {
      const why = error ? `not confirmed (${error.message || error})` : `returned: no queue ${this.routingKey}`;
      this._retryLater(`${item.messageId} ${why}`);
      return;
    }
    this.items.splice(this.items.indexOf(item), 1);
    this.retry.succeeded();
    this._spoolConfirm(item.seq);
    if (this.items.length === 0) this._wakeFlushers();
    this._pump();
  }

  _onReturn(message) {
    const messageId = message.properties && message.properties.messageId;
    const item = this.items.find(candidate => candidate.inFlight && candidate.messageId === messageId);
    if (item) item.returned = true; // RabbitMQ sends basic.return before the basic.ack of that message
  }

  _retryLater(reason) {
    const delay = this.closed ? null : this.retry.schedule();
    if (delay !== null) this._log('warn', `${reason}; ${this.items.length} pending, retrying in ${delay} ms`);
  }

  _wakeFlushers() {
    const waiters = this.flushWaiters;
    this.flushWaiters = [];
    for (const waiter of waiters) {
      clearTimeout(waiter.timer);
      waiter.resolve();
    }
  }

  // -- connection ---------------------------------------------------------------------------------
  async _connect() {
    if (this.connecting || this.channel || this.reconnect.pending || this.closed) return;
    this.connecting = true;
    let connection = null;
    try {
      connection = await amqp.connect(this.options.url, {
        clientProperties: { connection_name: 'pushgw-parse-queue' },
      });
      connection.on('error', error => this._log('warn', `connection error: ${error.message}`));
      connection.on('close', () => this._lost(connection, 'connection closed'));
      const channel = await connection.createConfirmChannel();
      channel.on('error', error => this._log('warn', `channel error: ${error.message}`));
      channel.on('close', () => this._lost(connection, 'channel closed'));
      channel.on('return', message => this._onReturn(message));
      if (this.closed) {
        await connection.close().catch(() => undefined);
        return;
      }
      this.connection = connection;
      this.channel = channel;
      this.reconnect.succeeded();
      this._log('info', `connected to ${redactUrl(this.options.url)}, publishing to ${this.routingKey}`);
    } catch (error) {
      if (connection) connection.close().catch(() => undefined);
      this._reconnectLater(`cannot connect to ${redactUrl(this.options.url)}: ${error.message}`);
    } finally {
      this.connecting = false;
    }
    this._pump();
  }

  _lost(connection, reason) {
    if (this.connection !== connection) return;
    this.connection = null;
    this.channel = null;
    this.blocked = false;
    this.inFlight = 0;
    for (const item of this.items) {
      if (item.inFlight) {
        item.inFlight = false;
        item.attempt += 1; // its confirm callback, if it ever comes, is stale
      }
    }
    connection.close().catch(() => undefined);
    this._reconnectLater(reason);
  }

  _reconnectLater(reason) {
    const delay = this.closed ? null : this.reconnect.schedule();
    if (delay !== null) this._log('warn', `${reason}; ${this.items.length} pending, reconnecting in ${delay} ms`);
  }

  _log(level, text) {
    try {
      (this.logger[level] || this.logger.log).call(this.logger, `[pushgw-queue] ${text}`);
    } catch (_) {
      // a broken logger must not break publish()
    }
  }
}

function noopSubscriber() {
  const subscriber = new EventEmitter();
  subscriber.subscribe = () => undefined;
  subscriber.unsubscribe = () => undefined;
  return subscriber;
}

/**
 * A Parse Server `messageQueueAdapter` for `push.queueOptions` with `disablePushWorker: true`.
 * Options: url (amqp://…), prefix (pushgw's queue.prefix, default "pushgw"), spoolDir, logger,
 * minBackoffMs, maxBackoffMs, maxInFlight. `flush()` and `close()` are for tests and shutdown.
 */
function pushgwQueueAdapter(options = {}) {
  const queue = new PushgwQueue(options);
  return {
    createPublisher() {
      return queue.start();
    },
    createSubscriber() {
      return noopSubscriber(); // only used when a Parse PushWorker runs in this process
    },
    flush: flushOptions => queue.flush(flushOptions),
    close: () => queue.close(),
    queue,
  };
}

module.exports = { pushgwQueueAdapter, PushgwQueue };
