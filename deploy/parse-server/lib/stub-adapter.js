'use strict';
// An inert push adapter: Parse Server advertises push (Dashboard, /serverInfo) but never sends itself.

const ROUTED_TO_PUSHGW = 'routed-to-pushgw';
const PUSH_TYPES = ['ios', 'osx', 'tvos', 'watchos', 'android', 'web', 'expo', 'embedded'];

// A push that slips past the routing shows up as failures in _PushStatus instead of vanishing.
// send() never rejects: a rejected adapter promise kills Parse Server and leaves the status `running`.
const stubPushAdapter = {
  getValidPushTypes() {
    return PUSH_TYPES.slice();
  },
  send(body, installations) {
    const results = (installations || []).map(installation => ({
      transmitted: false,
      device: { deviceType: installation.deviceType, deviceToken: installation.deviceToken },
      response: { error: ROUTED_TO_PUSHGW },
    }));
    return Promise.resolve(results);
  },
};

module.exports = { stubPushAdapter, ROUTED_TO_PUSHGW };
