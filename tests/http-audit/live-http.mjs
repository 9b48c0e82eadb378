// Live visits over plain HTTP, through the clients frontends use where
// WebSockets do not pass: graphql-sse's createClient in distinct connections
// mode (GraphQL over SSE: a POST with `Accept: text/event-stream`) and Apollo
// Client's HttpLink (multipart subscriptions: `Accept:
// multipart/mixed;subscriptionSpec=1.0`). Each subscribes to userVisitAdded
// on the gateway's /graphql and waits for the demo's next visit (the demo
// adds one to activity 10024069 every 5 s), both at once. Fails after 30 s
// without one, or on any error.
//   node live-http.mjs http://127.0.0.1:8080/graphql
import { createClient } from "graphql-sse";
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client/core/index.js";

const url = process.argv[2];
if (!url) {
  console.error("usage: node live-http.mjs <GraphQL endpoint URL>");
  process.exit(2);
}
const query = `subscription { userVisitAdded(activityId: "10024069") { nickname isAnonymous visitAt durationMinutes } }`;

const timer = setTimeout(() => fail("both", "no visit arrived within 30 s"), 30_000);
function fail(who, why) {
  console.error(`FAIL: live visits over ${who}: ${why}`);
  process.exit(1);
}

function check(who, result) {
  if (result.errors) fail(who, JSON.stringify(result.errors));
  const visit = result.data?.userVisitAdded;
  if (!visit || typeof visit.visitAt !== "string" || typeof visit.isAnonymous !== "boolean") {
    fail(who, `unexpected payload ${JSON.stringify(result)}`);
  }
  console.log(`ok: ${who} received a live visit at ${visit.visitAt}`);
}

// graphql-sse, distinct connections mode: one POST per subscription.
const sse = new Promise((resolve) => {
  const who = "graphql-sse (distinct connections)";
  const client = createClient({ url, singleConnection: false, retryAttempts: 0 });
  const unsubscribe = client.subscribe(
    { query },
    {
      next(result) {
        check(who, result);
        unsubscribe();
        client.dispose();
        resolve();
      },
      error(err) {
        fail(who, err instanceof Error ? err.message : JSON.stringify(err));
      },
      complete() {},
    },
  );
});

// Apollo Client's HttpLink: a subscription over multipart HTTP.
const multipart = new Promise((resolve) => {
  const who = "Apollo Client HttpLink (multipart)";
  const client = new ApolloClient({ cache: new InMemoryCache(), link: new HttpLink({ uri: url }) });
  const subscription = client.subscribe({ query: gql(query) }).subscribe({
    next(result) {
      check(who, result);
      subscription.unsubscribe();
      client.stop();
      resolve();
    },
    error(err) {
      fail(who, err instanceof Error ? err.message : JSON.stringify(err));
    },
  });
});

await Promise.all([sse, multipart]);
clearTimeout(timer);
process.exit(0);
