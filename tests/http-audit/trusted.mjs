// Trusted documents with Apollo's own tools, against a gateway
// running PERSISTED_QUERIES_ONLY with the manifest that Apollo's
// generate-persisted-query-manifest wrote from trusted/operations.graphql:
// - Apollo Client's persisted query link, its ids taken from that manifest
//   (generatePersistedQueryIdsFromManifest), runs the operation by id alone,
//   over POST and with useGETForHashedQueries, and is never told
//   PERSISTED_QUERY_NOT_FOUND;
// - a query that is not in the manifest is refused, sent as text (403
//   PERSISTED_QUERY_NOT_ALLOWED) or through automatic persisted queries (the
//   link's registration is refused the same way).
//
//   node tests/http-audit/trusted.mjs http://127.0.0.1:8080/graphql trusted/persisted-query-manifest.json
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core/index.js';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries/index.js';
import { generatePersistedQueryIdsFromManifest } from '@apollo/persisted-query-lists';

const [url, manifestPath] = process.argv.slice(2);
if (!url || !manifestPath) {
  console.error('usage: node trusted.mjs <GraphQL endpoint URL> <persisted query manifest>');
  process.exit(2);
}
const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
const operations = readFileSync(new URL('./trusted/operations.graphql', import.meta.url), 'utf8');
const variables = { id: '10024069' };
const sha256 = (text) => createHash('sha256').update(text).digest('hex');

function fail(message, sent) {
  console.error(`FAIL: ${message}`);
  for (const s of sent) console.error(`  ${s.method} ${s.url} ${s.body ?? ''} -> ${s.status}`);
  process.exit(1);
}

function client(sent, persisted) {
  const http = new HttpLink({
    uri: url,
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      sent.push({ method: init?.method ?? 'GET', url: String(input), body: init?.body, status: response.status });
      return response;
    },
  });
  return new ApolloClient({ cache: new InMemoryCache(), link: persisted ? persisted.concat(http) : http });
}

const carriesQuery = (s) => (s.body ?? '').includes('"query"') || new URL(s.url).searchParams.has('query');

for (const useGETForHashedQueries of [false, true]) {
  const mode = useGETForHashedQueries ? 'GET' : 'POST';
  const sent = [];
  const link = createPersistedQueryLink({
    ...generatePersistedQueryIdsFromManifest({ loadManifest: () => manifest }),
    useGETForHashedQueries,
  });
  const r = await client(sent, link).query({ query: gql(operations), variables, fetchPolicy: 'network-only' });
  if (typeof r.data?.userVisits?.totalCount !== 'number') fail(`${mode}: no totalCount`, sent);
  if (sent.length !== 1 || carriesQuery(sent[0]) || sent[0].status !== 200) {
    fail(`${mode}: the manifest's id alone must run, at once`, sent);
  }
  if (sent[0].method !== mode) fail(`${mode}: the id went by ${sent[0].method}`, sent);
  console.log(`ok   a manifest operation by id with Apollo Client over ${mode}`);
}

const notListed = gql('query NotListed($id: ID!) { userVisits(activityId: $id) { totalCount } }');
async function refused(what, sent, persisted) {
  try {
    await client(sent, persisted).query({ query: notListed, variables, fetchPolicy: 'network-only' });
  } catch (e) {
    const server = e.networkError;
    const code = server?.result?.errors?.[0]?.extensions?.code;
    if (server?.statusCode !== 403 || code !== 'PERSISTED_QUERY_NOT_ALLOWED') {
      fail(`${what}: expected 403 PERSISTED_QUERY_NOT_ALLOWED, got ${server?.statusCode} ${code ?? e}`, sent);
    }
    console.log(`ok   ${what}: 403 PERSISTED_QUERY_NOT_ALLOWED`);
    return;
  }
  fail(`${what}: a query outside the manifest ran`, sent);
}
await refused('a query outside the manifest, as text', []);
const apq = [];
await refused('a query outside the manifest, registered by APQ', apq, createPersistedQueryLink({ sha256 }));
if (apq.length !== 2 || carriesQuery(apq[0]) || !carriesQuery(apq[1])) {
  fail('APQ: expected the hash (not found), then the refused registration', apq);
}
