// Cloud Code of the e2e app: every Parse.Push.send here goes to pushgw's intake (route B1).
const { routeCloudPushes } = require('@pushgw/parse-server');

routeCloudPushes({ url: process.env.PUSHGW_URL });

// $inQuery on _User, built with the SDK: installations of every user on `team`.
Parse.Cloud.define('notifyTeam', async request => {
  const members = new Parse.Query(Parse.User).equalTo('team', request.params.team);
  const where = new Parse.Query(Parse.Installation).matchesQuery('user', members);
  return Parse.Push.send({ where, data: request.params.data }, { useMasterKey: true });
});

// Proves Cloud Code queries still run in-process (directAccess + the router pin) next to the override.
Parse.Cloud.define('countTeam', async request => {
  const members = new Parse.Query(Parse.User).equalTo('team', request.params.team);
  return members.count({ useMasterKey: true });
});

// Sends `push` as given, so a test can compare pushgw's error answer with what Cloud Code sees.
Parse.Cloud.define('sendRaw', async request => Parse.Push.send(request.params.push, { useMasterKey: true }));
