// Browser test of the vmpipe inbox page: signs in, searches a spoken word, opens the first
// result, plays it and follows the transcript segments, checks the phone layout, and saves a
// screenshot. Drives Debian's Chromium with playwright-core (no browser download).
//
//   INBOX_URL=http://127.0.0.1:18081/ INBOX_TOKEN=... INBOX_WORD=invoice \
//   INBOX_SCREENSHOT=/tmp/inbox.png node tests/browser/inbox.mjs
//
// Exit code 0 when every step passed; 1 with the failing step on stderr otherwise.

import { chromium } from 'playwright-core';

const env = process.env;
const missing = ['INBOX_URL', 'INBOX_TOKEN', 'INBOX_WORD', 'INBOX_SCREENSHOT'].filter((k) => !env[k]);
if (missing.length) {
  console.error(`inbox test: set ${missing.join(', ')} (see tests/browser/README.md)`);
  process.exit(1);
}
const URL_ = env.INBOX_URL;
const TOKEN = env.INBOX_TOKEN;
const WORD = env.INBOX_WORD;
const SCREENSHOT = env.INBOX_SCREENSHOT;
const TIMEOUT = Number(env.INBOX_TIMEOUT_MS || 30000);
if (!Number.isFinite(TIMEOUT) || TIMEOUT <= 0) {
  console.error('inbox test: INBOX_TIMEOUT_MS must be a positive number of milliseconds');
  process.exit(1);
}

const tid = (id) => `[data-testid="${id}"]`;
const started = Date.now();
const problems = []; // page errors, CSP violations, failed requests: each fails the test
let page;
let browser;
let stepName = '';

class StepFailure extends Error {}

function fail(message) {
  throw new StepFailure(message);
}

function checkProblems() {
  if (problems.length) fail(problems.join('\n  '));
}

async function step(name, fn) {
  stepName = name;
  const t0 = Date.now();
  const result = await fn();
  checkProblems();
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  return result;
}

// Shortens a Playwright error (which carries a long call log) to its first line.
function brief(e) {
  return String((e && e.message) || e).split('\n')[0];
}

// Words match when one contains the other or they share a stem ("invoices" ~ "invoice").
function sameWord(a, b) {
  const x = a.toLowerCase().replace(/[^\p{L}\p{N}]/gu, '');
  const y = b.toLowerCase().replace(/[^\p{L}\p{N}]/gu, '');
  if (!x || !y) return false;
  if (x.includes(y) || y.includes(x)) return true;
  let n = 0;
  while (n < x.length && n < y.length && x[n] === y[n]) n++;
  return n >= Math.max(3, Math.min(x.length, y.length) - 2);
}

async function errorText() {
  const err = page.locator(tid('error'));
  return (await err.isVisible()) ? (await err.textContent()).trim() : '';
}

// Waits for `fn` in the page; on timeout fails with `message` (plus the page's error area).
async function waitIn(message, fn, arg, opts) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: TIMEOUT, ...opts });
  } catch (e) {
    const shown = await errorText().catch(() => '');
    fail(`${message}${shown ? ` (page shows: "${shown}")` : ''} [${brief(e)}]`);
  }
}

async function audioState() {
  return page.evaluate(() => {
    const a = document.querySelector('[data-testid="player"]');
    const segs = Array.from(document.querySelectorAll('[data-testid="segment"]'));
    return {
      currentTime: a.currentTime,
      duration: a.duration,
      paused: a.paused,
      readyState: a.readyState,
      error: a.error && a.error.message,
      active: segs.findIndex((s) => s.classList.contains('active') && s.getAttribute('aria-current') === 'true'),
    };
  });
}

async function main() {
  browser = await chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);

  page.on('pageerror', (e) => problems.push(`page error: ${brief(e)}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const text = msg.text();
      if (/Content[- ]Security[- ]Policy/i.test(text)) problems.push(`CSP violation: ${text}`);
      else problems.push(`console error: ${text}`);
    }
  });
  page.on('response', (res) => {
    if (res.status() >= 400) problems.push(`HTTP ${res.status()} for ${res.request().method()} ${res.url()}`);
  });
  page.on('requestfailed', (req) => {
    const why = req.failure() && req.failure().errorText;
    // A request the page cancels on purpose (switching voicemails) is not a failure.
    if (why !== 'net::ERR_ABORTED') problems.push(`request failed: ${req.url()} (${why})`);
  });
  // Report every CSP violation, also those Chromium does not log to the console.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`Content Security Policy violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`);
    });
  });

  await step('open the page', async () => {
    const res = await page.goto(URL_, { waitUntil: 'load' }).catch((e) => fail(`cannot open ${URL_}: ${brief(e)}`));
    if (!res || !res.ok()) fail(`GET ${URL_} answered ${res ? res.status() : 'nothing'}`);
    const csp = res.headers()['content-security-policy'] || '';
    if (!csp.includes("script-src 'self'")) fail(`the page has no strict Content-Security-Policy (got "${csp}")`);
    await page.locator(tid('token-input')).waitFor({ state: 'visible' })
      .catch((e) => fail(`no sign-in form (token-input) on the page: ${brief(e)}`));
  });

  await step('sign in with the token', async () => {
    await page.locator(tid('token-input')).fill(TOKEN);
    await page.locator(tid('sign-in')).click();
    const which = await Promise.race([
      page.locator(tid('search-input')).waitFor({ state: 'visible' }).then(() => 'list'),
      page.locator(tid('error')).waitFor({ state: 'visible' }).then(() => 'error'),
    ]).catch((e) => fail(`neither the list nor an error appeared after signing in: ${brief(e)}`));
    if (which === 'error') fail(`sign-in failed: "${await errorText()}"`);
    const stored = await page.evaluate(() => sessionStorage.getItem('vmpipe.token'));
    if (stored !== TOKEN) fail('the token is not kept in sessionStorage under vmpipe.token');
    if (page.url().includes(TOKEN)) fail('the token appears in the page URL');
  });

  await step(`search "${WORD}"`, async () => {
    await page.locator(tid('search-input')).fill(WORD);
    const answered = page.waitForResponse((r) => r.url().includes('/api/v1/voicemails?') &&
      new URL(r.url()).searchParams.get('q') === WORD);
    await page.locator(tid('search-button')).click();
    const res = await answered.catch((e) => fail(`no search request with q=${WORD}: ${brief(e)}`));
    if (!res.ok()) fail(`the search answered HTTP ${res.status()}`);
    if (res.url().includes(TOKEN)) fail('the token appears in the search URL');
    await waitIn(`no result for "${WORD}" appeared`, () =>
      document.querySelector('[data-testid="result"]') !== null ||
      !document.querySelector('[data-testid="empty"]').hidden);
    if (await page.locator(tid('empty')).isVisible()) fail(`the page says no voicemail matches "${WORD}"`);
  });

  await step(`the first result's snippet marks "${WORD}"`, async () => {
    const results = page.locator(tid('result'));
    const count = await results.count();
    if (count < 1) fail('no result');
    const marks = await results.first().locator(`${tid('snippet')} mark`).allTextContents();
    if (!marks.length) fail(`the first result's snippet has no <mark> (snippet: "${await results.first().locator(tid('snippet')).textContent()}")`);
    if (!marks.some((m) => sameWord(m, WORD))) fail(`no <mark> matches "${WORD}": marked ${JSON.stringify(marks)}`);
    console.log(`   ${count} result(s); marked ${JSON.stringify(marks)}`);
  });

  const listCount = await page.locator(tid('result')).count();

  await step('open the first result', async () => {
    await page.locator(tid('result')).first().click();
    await page.locator(tid('player')).waitFor({ state: 'attached' });
    await page.locator(tid('back')).waitFor({ state: 'visible' })
      .catch((e) => fail(`the voicemail view did not open: ${brief(e)}`));
  });

  await step('the player loads the audio', async () => {
    await waitIn('the audio did not load (duration stays 0/NaN)', () => {
      const a = document.querySelector('[data-testid="player"]');
      return a && a.src.startsWith('blob:') && Number.isFinite(a.duration) && a.duration > 0;
    });
    const s = await audioState();
    console.log(`   duration ${s.duration.toFixed(2)} s`);
  });

  await step('play: currentTime advances past 0.5 s and keeps advancing', async () => {
    const err = await page.evaluate(() =>
      document.querySelector('[data-testid="player"]').play().then(() => '', (e) => String(e)));
    if (err) fail(`audio.play() was refused: ${err}`);
    await waitIn('currentTime did not pass 0.5 s', () =>
      document.querySelector('[data-testid="player"]').currentTime > 0.5);
    const t1 = (await audioState()).currentTime;
    await waitIn(`currentTime stopped at ${t1.toFixed(2)} s`, (t) => {
      const a = document.querySelector('[data-testid="player"]');
      return a.currentTime > t + 0.2 || a.ended;
    }, t1);
  });

  const segments = page.locator(tid('segment'));
  const nSegments = await segments.count();

  await step(`the highlighted segment follows the audio (${nSegments} segments)`, async () => {
    if (nSegments === 0) fail('the voicemail view shows no transcript segments');
    const startsOk = await segments.evaluateAll((els) => els.every((e) => /^\d+$/.test(e.dataset.startMs || '')));
    if (!startsOk) fail('a segment has no numeric data-start-ms');
    const target = nSegments >= 2 ? 'a segment after the first' : 'the segment';
    await waitIn(`${target} never became active while playing`, (min) => {
      const segs = Array.from(document.querySelectorAll('[data-testid="segment"]'));
      const active = segs.filter((s) => s.classList.contains('active') && s.getAttribute('aria-current') === 'true');
      return active.length === 1 && segs.indexOf(active[0]) >= min;
    }, nSegments >= 2 ? 1 : 0);
    const actives = await page.locator(`${tid('segment')}.active`).count();
    if (actives !== 1) fail(`${actives} segments are highlighted at once`);
    console.log(`   segment ${(await audioState()).active + 1} of ${nSegments} active at ${(await audioState()).currentTime.toFixed(2)} s`);
  });

  await step('clicking the last segment seeks there and highlights it', async () => {
    const last = segments.last();
    const startMs = Number(await last.getAttribute('data-start-ms'));
    await last.click();
    await waitIn(`currentTime did not jump to ${startMs / 1000} s`, (s) => {
      const t = document.querySelector('[data-testid="player"]').currentTime;
      return Math.abs(t - s) <= 0.5;
    }, startMs / 1000, { polling: 'raf' });
    await waitIn('the last segment did not become active', () => {
      const segs = document.querySelectorAll('[data-testid="segment"]');
      const l = segs[segs.length - 1];
      return l.classList.contains('active') && l.getAttribute('aria-current') === 'true';
    });
    const s = await audioState();
    if (s.paused && !(s.currentTime >= s.duration - 0.05)) fail('the audio does not play after clicking a segment');
    console.log(`   seeked to ${startMs} ms, now at ${s.currentTime.toFixed(2)} s`);
  });

  await step(`screenshot of the voicemail view (1100x800) to ${SCREENSHOT}`, async () => {
    const sw = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (sw > 1) fail(`the page scrolls horizontally at 1100 px (${sw} px too wide)`);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });

  await step('phone viewport 390x844: no horizontal scroll (voicemail view and list)', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    let o = await overflow();
    if (o > 1) fail(`the voicemail view scrolls horizontally at 390 px (${o} px too wide)`);
    await page.locator(tid('back')).click();
    await page.locator(tid('result')).first().waitFor({ state: 'visible' })
      .catch((e) => fail(`Back did not return to the list: ${brief(e)}`));
    const n = await page.locator(tid('result')).count();
    if (n !== listCount) fail(`Back did not keep the results (${n} shown, ${listCount} before)`);
    const playing = await page.evaluate(() => !document.querySelector('[data-testid="player"]').paused);
    if (playing) fail('the audio keeps playing after Back');
    o = await overflow();
    if (o > 1) fail(`the list scrolls horizontally at 390 px (${o} px too wide)`);
  });

  checkProblems();
  console.log(`inbox test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

try {
  await main();
  await browser.close();
  process.exit(0);
} catch (e) {
  const msg = e instanceof StepFailure ? e.message : `${brief(e)}`;
  console.error(`FAIL - ${stepName || 'start the browser'}: ${msg}`);
  if (page && !page.isClosed()) {
    const shot = SCREENSHOT.replace(/(\.png)?$/i, '.failed.png');
    await page.screenshot({ path: shot, fullPage: true }).then(
      () => console.error(`   page at the failure: ${shot}`), () => {});
  }
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
