// Live visits through the client frontends use: graphql-ws's createClient
// (graphql-transport-ws) subscribes to userVisitAdded on the gateway's
// /graphql and waits for the demo's next visit (the demo adds one to
// activity 10024069 every 5 s). Fails after 30 s without one, or on any error.
//   node live.mjs http://127.0.0.1:8080/graphql
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const url = process.argv[2].replace(/^http/, "ws");
const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0 });
const query = `subscription { userVisitAdded(activityId: "10024069") { nickname isAnonymous visitAt durationMinutes } }`;

const timer = setTimeout(() => fail("no visit arrived within 30 s"), 30_000);
function fail(why) {
  console.error(`FAIL: live visits over graphql-ws: ${why}`);
  process.exit(1);
}

const unsubscribe = client.subscribe(
  { query },
  {
    next(result) {
      if (result.errors) fail(JSON.stringify(result.errors));
      const visit = result.data?.userVisitAdded;
      if (!visit || typeof visit.visitAt !== "string" || typeof visit.isAnonymous !== "boolean") {
        fail(`unexpected payload ${JSON.stringify(result)}`);
      }
      console.log(`ok: graphql-ws received a live visit at ${visit.visitAt}`);
      clearTimeout(timer);
      unsubscribe();
      client.dispose().then(() => process.exit(0));
    },
    error(err) {
      fail(err instanceof Error ? err.message : JSON.stringify(err));
    },
    complete() {},
  },
);
