// Opens the gateway's GraphiQL playground in Debian's chromium (driven by
// playwright-core, which downloads no browser), runs the default query with
// GraphiQL's run button and checks that visits appear in the result pane;
// then reloads, pastes an anonymous query over the example and runs it at once,
// runs the statistics tab, and runs a subscription until a live visit shows.
//
//   node tests/browser/playground.mjs http://127.0.0.1:PORT/graphql [screenshot.png]
//
// Fails on any request to a host other than the gateway's, on any console
// error or CSP violation, on any failed request and on an HTTP error status.
// scripts/browser-test.sh starts `visits-gateway demo` and runs this.

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.argv[2];
const screenshot = process.argv[3] ?? 'target/playground.png';
if (!url) {
  console.error('usage: node playground.mjs http://127.0.0.1:PORT/graphql [screenshot.png]');
  process.exit(2);
}
const origin = new URL(url).origin;
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TIMEOUT_MS = 30_000;

const problems = [];
const problem = (what) => {
  problems.push(what);
  console.error(`problem: ${what}`);
};
const step = (what) => console.log(`-- ${what}`);

const userDataDir = mkdtempSync(join(tmpdir(), 'playground-chromium-'));
let context;
try {
  step(`launching ${executablePath}`);
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
  });
  console.log(`   chromium ${context.browser()?.version() ?? '(persistent context)'}`);

  // Nothing but the gateway: requests elsewhere are recorded and aborted.
  await context.route('**/*', (route) => {
    const request = route.request();
    const target = request.url();
    if (target.startsWith('data:') || target.startsWith('blob:')) return route.continue();
    if (new URL(target).origin !== origin) {
      problem(`request to another host: ${request.method()} ${target}`);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });

  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT_MS);
  // CSP violations also reach the console, but an event names the directive.
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`);
    });
  });
  page.on('console', (message) => {
    if (message.type() === 'error') problem(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problem(`uncaught exception: ${error.message}`));
  page.on('requestfailed', (request) => {
    if (new URL(request.url()).origin === origin) {
      problem(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
    }
  });
  const graphqlResponses = [];
  page.on('response', (response) => {
    if (response.status() >= 400) problem(`HTTP ${response.status()} for ${response.url()}`);
    const request = response.request();
    if (request.method() === 'POST' && new URL(response.url()).pathname === new URL(url).pathname) {
      graphqlResponses.push(
        response.json().then(
          (body) => {
            const sent = JSON.parse(request.postData() ?? '{}');
            return { query: sent.query ?? '', operationName: sent.operationName, body };
          },
          (e) => ({ query: '', body: { errors: [{ message: `not JSON: ${e}` }] } })
        )
      );
    }
  });

  step(`opening ${url}`);
  const response = await page.goto(url, { waitUntil: 'load' });
  if (response?.status() !== 200) problem(`the page answered ${response?.status()}`);
  const csp = response?.headers()['content-security-policy'] ?? '';
  if (!csp.includes("default-src 'self'")) problem(`no strict CSP on the page: "${csp}"`);

  step('waiting for the editors');
  const queryEditor = page.locator('.graphiql-query-editor .CodeMirror');
  await queryEditor.waitFor({ state: 'visible' });
  await page.waitForFunction(() =>
    document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror?.getValue().includes('userVisits')
  );
  const variables = await page.evaluate(
    () => document.querySelector('.graphiql-editor-tool .CodeMirror')?.CodeMirror?.getValue() ?? ''
  );
  console.log(`   variables: ${variables.replace(/\s+/g, ' ')}`);
  if (!variables.includes('activityId')) problem(`the variables editor does not hold the example: ${variables}`);

  // GraphiQL fetches the schema first; its introspection must succeed, or the
  // editor has no completion and no docs.
  step('waiting for the schema (introspection)');
  await page.waitForFunction(() => document.querySelector('.graphiql-container') !== null);
  await waitFor(async () => {
    for (const r of await Promise.all(graphqlResponses)) {
      if (r.query.includes('__schema')) return r;
    }
    return null;
  }, 'an introspection response').then((r) => {
    if (!r.body.data?.__schema || r.body.errors) {
      problem(`introspection failed: ${JSON.stringify(r.body).slice(0, 500)}`);
    }
  });

  step('clicking the run button');
  await page.locator('button.graphiql-execute-button').click();

  step('waiting for the result pane');
  const result = await page.waitForFunction(() => {
    const value = document.querySelector('.result-window .CodeMirror')?.CodeMirror?.getValue() ?? '';
    return value.includes('"userVisits"') || value.includes('"errors"') ? value : false;
  });
  const text = await result.jsonValue();
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    problem(`the result pane does not hold JSON: ${text.slice(0, 500)}`);
  }
  const visits = body?.data?.userVisits;
  if (body?.errors) problem(`the default query answered errors: ${JSON.stringify(body.errors)}`);
  if (!(visits?.totalCount > 0)) problem(`no visits: totalCount is ${visits?.totalCount}`);
  const nodes = visits?.nodes ?? visits?.edges?.map((e) => e.node) ?? [];
  if (nodes.length === 0 || typeof nodes[0].nickname !== 'string') {
    problem(`no visit with a nickname in the result: ${text.slice(0, 500)}`);
  }
  // What a person sees, not only what the editor holds.
  const shown = await page.locator('.result-window').innerText();
  for (const word of ['userVisits', 'totalCount', 'nickname']) {
    if (!shown.includes(word)) problem(`the result pane does not show ${word}`);
  }
  console.log(`   totalCount ${visits?.totalCount}; ${nodes.length} visits shown; first: ${nodes[0]?.nickname}`);

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot });
  step(`screenshot: ${screenshot}`);

  // A reload restores what the user left (GraphiQL's state in localStorage),
  // here the example itself, rather than emptying the editors.
  step('reloading');
  await page.evaluate(() => {
    const editor = document.querySelector('.graphiql-editor-tool .CodeMirror')?.CodeMirror;
    editor?.setValue(editor.getValue().replace('"last": 10', '"last": 3'));
  });
  await page.waitForTimeout(1000); // GraphiQL stores its tabs after a debounce
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction(() =>
    document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror?.getValue().includes('userVisits')
  );
  const kept = await page.evaluate(
    () => document.querySelector('.graphiql-editor-tool .CodeMirror')?.CodeMirror?.getValue() ?? ''
  );
  if (!kept.includes('"last": 3')) problem(`the reload lost the edited variables: ${kept}`);

  // GraphiQL remembers the operation name of the example (NewestVisits) and
  // re-reads the editor only after a pause: a different, anonymous query
  // pasted over the example and run at once must not go out with that name.
  step('pasting an anonymous query over the example and running it at once');
  const anonymous = '{ pasted: userVisits(activityId: "10024069", first: 2) { totalCount nodes { nickname } } }';
  await queryEditor.click();
  await page.keyboard.press('ControlOrMeta+A');
  await page.evaluate((text) => {
    const data = new DataTransfer();
    data.setData('text/plain', text);
    const paste = new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true });
    document.activeElement.dispatchEvent(paste);
    document.querySelector('button.graphiql-execute-button').click();
  }, anonymous);
  const editorNow = await page.evaluate(
    () => document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror?.getValue() ?? ''
  );
  if (editorNow !== anonymous) problem(`the paste did not replace the query: ${editorNow}`);
  const pastedResult = await page.waitForFunction(() => {
    const value = document.querySelector('.result-window .CodeMirror')?.CodeMirror?.getValue() ?? '';
    return value.includes('"pasted"') || value.includes('"errors"') ? value : false;
  });
  const pastedText = await pastedResult.jsonValue();
  let pastedBody;
  try {
    pastedBody = JSON.parse(pastedText);
  } catch (e) {
    problem(`the result pane does not hold JSON: ${pastedText.slice(0, 500)}`);
  }
  if (pastedBody?.errors) problem(`the pasted query answered errors: ${JSON.stringify(pastedBody.errors)}`);
  if (!(pastedBody?.data?.pasted?.nodes?.length > 0)) {
    problem(`the pasted query answered no visits: ${pastedText.slice(0, 500)}`);
  }
  const sent = (await Promise.all(graphqlResponses)).filter((r) => r.query === anonymous);
  if (sent.length !== 1) problem(`the pasted query was sent ${sent.length} times`);
  for (const r of sent) {
    if (r.operationName != null) problem(`the pasted query went out with operationName ${r.operationName}`);
  }
  console.log(`   pasted query: ${pastedBody?.data?.pasted?.nodes?.length ?? 0} visits shown`);

  // The statistics example waits in the second tab: a subscription, run at
  // once (it must not go out with the first tab's operation name either).
  // Its figures fill in to complete, the panel draws them with the
  // timeline, then a demo visit moves them.
  step('running the statistics tab');
  await page.locator('.graphiql-tab-button').nth(1).click();
  await page.waitForFunction(() =>
    document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror?.getValue().includes('userVisitStats')
  );
  await page.locator('button.graphiql-execute-button').click();
  const statsText = await (
    await page.waitForFunction(
      () => {
        const value = document.querySelector('.result-window .CodeMirror')?.CodeMirror?.getValue() ?? '';
        return /"complete": true/.test(value) || value.includes('"errors"') ? value : false;
      },
      undefined,
      { timeout: 60_000 }
    )
  ).jsonValue();
  const stats = JSON.parse(statsText).data?.userVisitStats;
  if (!(stats?.visits > 0 && stats?.timeline?.length > 0 && stats?.progress?.complete === true)) {
    problem(`the statistics tab showed no complete statistics: ${statsText.slice(0, 500)}`);
  }
  const panel = page.locator('#stats-panel');
  await panel.waitFor({ state: 'visible' });
  const drawn = await page.evaluate(() => {
    const p = document.getElementById('stats-panel');
    return {
      visits: p?.dataset.visits,
      complete: p?.dataset.complete,
      buckets: Number(p?.dataset.buckets),
      bars: p?.querySelectorAll('.stats-chart rect.stats-bar').length ?? 0,
      headline: p?.querySelector('.stats-headline')?.textContent ?? '',
    };
  });
  if (drawn.complete !== 'true' || drawn.bars !== stats.timeline.length || drawn.buckets !== drawn.bars) {
    problem(`the statistics panel does not show the result: ${JSON.stringify(drawn)}`);
  }
  console.log(`   statistics: ${stats?.visits} visits, ${stats?.uniqueVisitors} visitors; panel: ${drawn.headline}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-stats.png') });
  // The demo adds a visit to the activity every few seconds: the open
  // range's figures move.
  const moved = await page.waitForFunction(
    (before) => {
      const now = document.getElementById('stats-panel')?.dataset.visits;
      return now && Number(now) > before ? now : false;
    },
    stats.visits,
    { timeout: 60_000 }
  );
  console.log(`   statistics moved live: ${stats.visits} -> ${await moved.jsonValue()} visits`);
  // Stop the subscription (the run button stops a running one).
  await page.locator('button.graphiql-execute-button').click();
  await page.waitForTimeout(500);

  // A subscription runs over a WebSocket to the same /graphql; the demo adds
  // a visit to 10024069 every few seconds, and the result pane shows it.
  step('running a subscription and waiting for a live visit');
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const subscription =
    'subscription { userVisitAdded(activityId: "10024069") { nickname isAnonymous visitAt device } }';
  await page.evaluate((text) => {
    document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(text);
    document.querySelector('.graphiql-editor-tool .CodeMirror')?.CodeMirror?.setValue('{}');
  }, subscription);
  await page.waitForTimeout(1000); // GraphiQL re-reads the editor after a debounce
  await page.locator('button.graphiql-execute-button').click();
  const liveText = await (
    await page.waitForFunction(
      () => {
        const value = document.querySelector('.result-window .CodeMirror')?.CodeMirror?.getValue() ?? '';
        return value.includes('"userVisitAdded"') || value.includes('"errors"') ? value : false;
      },
      undefined,
      { timeout: 60_000 }
    )
  ).jsonValue();
  let live;
  try {
    live = JSON.parse(liveText);
  } catch (e) {
    problem(`the result pane does not hold JSON: ${liveText.slice(0, 500)}`);
  }
  const visit = live?.data?.userVisitAdded;
  if (live?.errors) problem(`the subscription answered errors: ${JSON.stringify(live.errors)}`);
  if (typeof visit?.nickname !== 'string' || !visit?.visitAt) {
    problem(`no live visit in the result pane: ${liveText.slice(0, 500)}`);
  }
  const wsUrl = new URL(url);
  wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  if (!sockets.includes(wsUrl.href)) problem(`the subscription did not go over ${wsUrl.href}: ${sockets}`);
  const liveShown = await page.locator('.result-window').innerText();
  if (!liveShown.includes('userVisitAdded')) problem('the result pane does not show userVisitAdded');
  console.log(`   live visit: ${visit?.nickname} at ${visit?.visitAt} over ${sockets.join(', ')}`);
} catch (e) {
  problem(`${e.stack ?? e}`);
} finally {
  await context?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}

if (problems.length > 0) {
  console.error(`\nFAIL: the playground browser test found ${problems.length} problem(s):`);
  for (const p of problems) console.error(`  - ${p}`);
  process.exit(1);
}
console.log('ok: GraphiQL loaded from the gateway alone and showed visits, also live');

async function waitFor(poll, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const value = await poll();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
