'use strict';
// Routes every Cloud Code Parse.Push.send to pushgw's intake, whatever `directAccess` says.

const DEFAULT_TIMEOUT_MS = 30000;

function parseGlobal(options) {
  const Parse = options.Parse || global.Parse;
  if (!Parse || !Parse.CoreManager) {
    throw new Error('routeCloudPushes: no Parse SDK; call it from cloud code or pass { Parse }');
  }
  return Parse;
}

function pushUrl(url) {
  if (!url) throw new Error('routeCloudPushes: `url` is required, e.g. http://pushgw:1337/parse');
  return `${String(url).replace(/\/+$/, '')}/push`;
}

async function readError(Parse, response) {
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    // 403 unauthorized has no body type at all; the status is the answer
  }
  const code = typeof body.code === 'number' ? body.code : Parse.Error.INTERNAL_SERVER_ERROR;
  const message = body.error || body.message || `pushgw answered HTTP ${response.status}`;
  return new Parse.Error(code, message);
}

/**
 * Installs a push controller so that `Parse.Push.send` in this process POSTs to pushgw and resolves to
 * the push status id (`X-Parse-Push-Status-Id`). Returns the controller.
 *
 * Never retries: the request may have been accepted when the answer is lost, and a second POST would
 * send the push twice. Failures reject with a Parse.Error (CONNECTION_FAILED when pushgw was unreachable
 * or too slow: then the push may or may not have been accepted; check _PushStatus before sending again).
 */
function routeCloudPushes(options = {}) {
  const Parse = parseGlobal(options);
  const url = pushUrl(options.url);
  const timeoutMs = options.timeoutMs || DEFAULT_TIMEOUT_MS;
  const controller = {
    async send(data, sendOptions = {}) {
      const applicationId = options.applicationId || Parse.applicationId;
      const masterKey = options.masterKey || Parse.masterKey;
      const headers = { 'Content-Type': 'application/json', 'X-Parse-Application-Id': applicationId };
      // Parse.Push.send defaults useMasterKey to true; false keeps Parse's answer (403) for a non-master push.
      if (sendOptions.useMasterKey !== false) headers['X-Parse-Master-Key'] = masterKey;
      if (sendOptions.sessionToken) headers['X-Parse-Session-Token'] = sendOptions.sessionToken;
      let response;
      try {
        response = await fetch(url, {
          method: 'POST',
          headers,
          body: JSON.stringify(data),
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (error) {
        throw new Parse.Error(Parse.Error.CONNECTION_FAILED, `pushgw unreachable: ${error.message}`);
      }
      if (!response.ok) throw await readError(Parse, response);
      await response.arrayBuffer().catch(() => undefined); // release the connection
      return response.headers.get('X-Parse-Push-Status-Id') || undefined;
    },
  };
  Parse.CoreManager.setPushController(controller);
  return controller;
}

module.exports = { routeCloudPushes };
