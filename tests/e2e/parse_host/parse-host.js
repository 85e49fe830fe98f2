// A real Parse Server 9.10 for tests/e2e/test_parse_server.py, configured the way docs/parse-server.md
// tells operators to: stub push adapter, Cloud Code pushes routed to pushgw (B1, directAccess on), and
// Parse's own /push handed to the pushgw fleet through RabbitMQ (route C).
const express = require('express');
const { ParseServer } = require('parse-server');
const { stubPushAdapter, pushgwQueueAdapter } = require('@pushgw/parse-server');

const env = process.env;
const port = Number(env.PARSE_PORT);
const mount = '/parse';

async function main() {
  const queue = pushgwQueueAdapter({
    url: env.PUSHGW_AMQP_URL,
    prefix: env.PUSHGW_QUEUE_PREFIX,
    spoolDir: env.PUSHGW_SPOOL_DIR,
    minBackoffMs: 100,
  });
  const parse = new ParseServer({
    appId: env.PARSE_APP_ID,
    masterKey: env.PARSE_MASTER_KEY,
    restAPIKey: env.PARSE_REST_KEY,
    javascriptKey: env.PARSE_JS_KEY,
    databaseURI: env.PARSE_DB_URI,
    serverURL: `http://127.0.0.1:${port}${mount}`,
    masterKeyIps: ['127.0.0.1', '::1'],
    logsFolder: env.PARSE_LOGS_DIR,
    cloud: `${__dirname}/cloud/main.js`,
    directAccess: true,
    // PARSE_OWN_WORKER=1: route A's Parse Server, whose own worker only ever meets the stub.
    push: env.PARSE_OWN_WORKER
      ? { adapter: stubPushAdapter }
      : {
          adapter: stubPushAdapter,
          queueOptions: {
            disablePushWorker: true,
            batchSize: Number(env.PARSE_PUSH_BATCH_SIZE || 100),
            messageQueueAdapter: queue,
          },
        },
  });
  await parse.start();
  const app = express();
  app.use(mount, parse.app);
  const server = app.listen(port, '127.0.0.1');
  process.on('SIGTERM', async () => {
    server.close();
    await queue.flush({ timeoutMs: 3000 }).catch(error => console.error(error.message));
    await queue.close();
    process.exit(0);
  });
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
