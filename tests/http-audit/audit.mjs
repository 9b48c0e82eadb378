// Runs every audit of graphql-http's serverAudits against a running gateway
// and fails when a MUST or a SHOULD is not ok (docs/api.md); the MAYs' results
// are printed for docs/api.md.
//
//   node tests/http-audit/audit.mjs http://127.0.0.1:8080/graphql
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <GraphQL endpoint URL>');
  process.exit(2);
}

const audits = serverAudits({ url });
const results = await Promise.all(audits.map((audit) => audit.fn()));
const level = (result) => result.name.split(' ')[0];
const required = results.filter((r) => level(r) !== 'MAY');
const failed = required.filter((r) => r.status !== 'ok');

for (const result of results) {
  const mark = result.status === 'ok' ? 'ok  ' : level(result) === 'MAY' ? 'no  ' : 'FAIL';
  console.log(`${mark} ${result.id} ${result.name}`);
  if (result.status !== 'ok') {
    console.log(`       ${result.reason}`);
  }
}
const mays = results.filter((r) => level(r) === 'MAY');
console.log(
  `\n${results.length} audits: ${required.length - failed.length}/${required.length} MUST and SHOULD ok, ` +
    `${mays.filter((r) => r.status === 'ok').length}/${mays.length} MAY met`,
);
if (failed.length > 0) {
  console.error(`\nFAIL: ${failed.length} MUST or SHOULD not ok:`);
  for (const result of failed) console.error(`  ${result.id} ${result.name}: ${result.reason}`);
  process.exit(1);
}
