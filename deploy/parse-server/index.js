'use strict';
// @pushgw/parse-server: the Parse Server side of pushgw (docs/parse-server.md in the pushgw repository).
const { routeCloudPushes } = require('./lib/cloud');
const { stubPushAdapter, ROUTED_TO_PUSHGW } = require('./lib/stub-adapter');
const { pushgwQueueAdapter, PushgwQueue } = require('./lib/queue');

module.exports = { routeCloudPushes, stubPushAdapter, ROUTED_TO_PUSHGW, pushgwQueueAdapter, PushgwQueue };
