// The JS SDK (parse 8.6.2) sending a push to pushgw's intake: node sdk-push.js '<json>'
// Input: {serverURL, appId, javascriptKey, masterKey, userId, data}. Prints {"id": <what send resolved to>}.
const Parse = require('parse/node');

async function main() {
  const input = JSON.parse(process.argv[2]);
  Parse.initialize(input.appId, input.javascriptKey, input.masterKey);
  Parse.serverURL = input.serverURL;
  const user = Parse.User.createWithoutData(input.userId);
  const where = new Parse.Query(Parse.Installation).equalTo('user', user);
  const id = await Parse.Push.send({ where, data: input.data }, { useMasterKey: true });
  process.stdout.write(JSON.stringify({ id: id === undefined ? null : id }));
}

main().catch(error => {
  process.stderr.write(`${error.code || ''} ${error.message}\n`);
  process.exit(1);
});
