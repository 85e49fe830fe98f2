// deploy/parse-server's queue adapter on its own, as Parse Server drives it: node queue-publish.js '<json>'
// Input: {url, prefix, spoolDir, messages: [string], flushMs}. Publishes each message on channel "e2e"
// the way PushQueue does, waits up to flushMs for confirms, closes, prints {"pending": n}.
const { pushgwQueueAdapter } = require('@pushgw/parse-server');

async function main() {
  const input = JSON.parse(process.argv[2]);
  const toStderr = text => process.stderr.write(`${text}\n`);
  const logger = { info: toStderr, warn: toStderr, error: toStderr };
  const adapter = pushgwQueueAdapter({ url: input.url, prefix: input.prefix, spoolDir: input.spoolDir,
                                       minBackoffMs: 50, maxBackoffMs: 200, logger });
  const publisher = adapter.createPublisher({});
  for (const message of input.messages) {
    publisher.publish('e2e', message); // returns nothing and must not throw, whatever the broker does
  }
  await adapter.flush({ timeoutMs: input.flushMs }).catch(() => undefined);
  const pending = adapter.queue.pending;
  await adapter.close();
  process.stdout.write(JSON.stringify({ pending }));
}

main().catch(error => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
