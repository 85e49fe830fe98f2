// Parse Server 9.10 with its own push pipeline (PushQueue → PushWorker → @parse/push-adapter → node-apn),
// for bench/vs_parse.py. Run with NODE_PATH=tests/e2e/parse_host/node_modules (the pinned install).
// node-apn takes another endpoint through the adapter's `ios` options: `address`, `port` and `ca` (the
// emulator's self-signed CA; NODE_EXTRA_CA_CERTS=<ca.pem> works too).
const express = require('express');
const { ParseServer } = require('parse-server');

const env = process.env;

async function main() {
  const port = Number(env.PARSE_PORT);
  const parse = new ParseServer({
    appId: env.PARSE_APP_ID,
    masterKey: env.PARSE_MASTER_KEY,
    databaseURI: env.PARSE_DB_URI,
    serverURL: `http://127.0.0.1:${port}/parse`,
    masterKeyIps: ['127.0.0.1', '::1'],
    logsFolder: env.PARSE_LOGS_DIR,
    logLevel: 'warn',
    push: {
      ios: {
        token: { key: env.APNS_KEY_FILE, keyId: env.APNS_KEY_ID, teamId: env.APNS_TEAM_ID },
        topic: env.APNS_TOPIC,
        production: false,
        address: '127.0.0.1',
        port: Number(env.APNS_PORT),
        ca: env.APNS_CA_FILE,
        // node-apn's per-stream idle timeout (default 5000 ms). Requests queued behind the connection's
        // stream limit idle too, so a large batch fails with timeouts unless this is raised.
        requestTimeout: Number(env.APNS_REQUEST_TIMEOUT_MS || 5000),
      },
      queueOptions: { batchSize: Number(env.PARSE_PUSH_BATCH_SIZE) },
    },
  });
  await parse.start();
  const app = express();
  app.use('/parse', parse.app);
  app.listen(port, '127.0.0.1');
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
