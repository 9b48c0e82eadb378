// Automatic persisted queries with Apollo Client's createPersistedQueryLink
// against a running gateway (docs/api.md), over POST and with
// useGETForHashedQueries: the first request sends only the hash and is told
// PERSISTED_QUERY_NOT_FOUND, the link resends it with the query, and a new
// client then runs it by hash alone.
//
//   node tests/http-audit/apq.mjs http://127.0.0.1:8080/graphql
import { createHash } from 'node:crypto';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core/index.js';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries/index.js';

const url = process.argv[2];
if (!url) {
  console.error('usage: node apq.mjs <GraphQL endpoint URL>');
  process.exit(2);
}
const sha256 = (text) => createHash('sha256').update(text).digest('hex');

function fail(message, sent) {
  console.error(`FAIL: ${message}`);
  for (const s of sent) console.error(`  ${s.method} ${s.url} ${s.body ?? ''} -> ${s.status}`);
  process.exit(1);
}

for (const useGETForHashedQueries of [false, true]) {
  const mode = useGETForHashedQueries ? 'GET' : 'POST';
  const sent = [];
  const client = () =>
    new ApolloClient({
      cache: new InMemoryCache(),
      link: createPersistedQueryLink({ sha256, useGETForHashedQueries }).concat(
        new HttpLink({
          uri: url,
          fetch: async (input, init) => {
            const response = await fetch(input, init);
            sent.push({ method: init?.method ?? 'GET', url: String(input), body: init?.body, status: response.status });
            return response;
          },
        }),
      ),
    });
  // A name per mode, so the GET run starts with a hash the gateway does not know.
  const query = gql(`query Persisted${mode}($id: ID!) { userVisits(activityId: $id, last: 2) { totalCount } }`);
  const variables = { id: '10024069' };
  const carriesQuery = (s) => (s.body ?? '').includes('"query"') || new URL(s.url).searchParams.has('query');

  const first = await client().query({ query, variables, fetchPolicy: 'network-only' });
  if (typeof first.data?.userVisits?.totalCount !== 'number') fail(`${mode}: no totalCount`, sent);
  if (sent.length !== 2) fail(`${mode}: expected the hash, then the query with it`, sent);
  if (carriesQuery(sent[0]) || !carriesQuery(sent[1])) fail(`${mode}: the first request must carry only the hash`, sent);
  if (sent[0].method !== mode) fail(`${mode}: the hash went by ${sent[0].method}`, sent);

  sent.length = 0;
  const again = await client().query({ query, variables, fetchPolicy: 'network-only' });
  if (again.data?.userVisits?.totalCount !== first.data.userVisits.totalCount) fail(`${mode}: another answer by hash`, sent);
  if (sent.length !== 1 || carriesQuery(sent[0]) || sent[0].status !== 200) fail(`${mode}: the hash alone must run`, sent);
  console.log(`ok   persisted queries with Apollo Client over ${mode}`);
}
