// Shared helpers of the Chromium tests: start the real yoom server, launch Debian's headless
// Chromium through playwright-core, open "people" (browser contexts) and wait with bounds.
//
// Env: YOOM_BIN (required) the server binary; SCREENSHOT_DIR (default ../../target/browser,
// relative to this folder) where PNGs are written; CHROMIUM (default /usr/bin/chromium).
// The server is started on 127.0.0.1 with port 0 and its URL read from its log line
// "listening on http://127.0.0.1:PORT". Every wait is bounded, so a broken build fails, never hangs.
// (The server itself honours YOOM_* variables from the environment, e.g. YOOM_WEB_DIR=../../web
// serves the web client from the source tree instead of the copy embedded in the binary.)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { before, after } from 'node:test';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const YOOM_BIN = process.env.YOOM_BIN;
export const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR
  ? path.resolve(process.env.SCREENSHOT_DIR)
  : path.resolve(HERE, '../../target/browser');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const SERVER_START_MS = 20_000;
export const SERVER_STOP_MS = 5_000;
export const BROWSER_LAUNCH_MS = 30_000;
export const WAIT_MS = 10_000; // any single UI expectation
const LOG_KEEP_CHARS = 64 * 1024;

// Flags from shared/LAB.md; the media ones give fake camera/microphone without prompts and let
// WebRTC gather candidates inside a loopback-only network namespace.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// eslint-disable-next-line no-control-regex
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

/** Starts `$YOOM_BIN serve --bind 127.0.0.1 --port 0 --udp-port 0 [extraArgs]`; resolves once it logs its URL.
 * The result has `url`, `child` and `log()` (the tail of everything the server printed). */
export function startServer(extraArgs = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(YOOM_BIN, ['serve', '--bind', '127.0.0.1', '--port', '0', '--udp-port', '0', ...extraArgs], {
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    let settled = false;
    const keep = (chunk) => {
      log = (log + chunk).slice(-LOG_KEEP_CHARS);
    };
    const fail = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`server printed no "listening on http://127.0.0.1:PORT" within ${SERVER_START_MS} ms; log:\n${log}`)),
      SERVER_START_MS,
    );
    const server = { child, url: null, log: () => log };
    const scan = (text) => {
      const match = stripAnsi(text).match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (match && !settled) {
        settled = true;
        clearTimeout(timer);
        server.url = match[1];
        resolve(server);
      }
    };
    // Keep draining both pipes for the whole run: a full pipe would block the server's logging.
    // The URL line is expected on stderr (tracing's default); stdout is scanned too, to be lenient.
    const lineReader = () => {
      let partial = '';
      return (d) => {
        const text = d.toString();
        keep(text);
        partial += text;
        const lines = partial.split('\n');
        partial = lines.pop();
        for (const line of lines) scan(line);
        scan(partial);
      };
    };
    child.stdout.on('data', lineReader());
    child.stderr.on('data', lineReader());
    child.on('error', (err) => fail(new Error(`cannot start ${YOOM_BIN}: ${err.message}`)));
    child.on('exit', (code, signal) => fail(new Error(`server exited before listening (${code ?? signal}); log:\n${log}`)));
  });
}

export async function stopServer(server) {
  const { child } = server;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), sleep(SERVER_STOP_MS).then(() => false)]);
  if (!done) {
    child.kill('SIGKILL');
    await Promise.race([exited, sleep(SERVER_STOP_MS)]);
  }
}

/** Launches headless Chromium with the LAB.md flags. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: BROWSER_LAUNCH_MS,
  });
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms.
 * `what` may be a function, called at the deadline, to describe the last state seen. */
export async function eventually(fn, what, timeout = WAIT_MS, interval = 100) {
  const deadline = Date.now() + timeout;
  let lastError = null;
  let lastValue;
  for (;;) {
    try {
      lastValue = await fn();
      if (lastValue) return lastValue;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError ? ` (last error: ${lastError.message})` : '';
      const label = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeout} ms waiting for ${label}${detail}`);
    }
    await sleep(interval);
  }
}

/**
 * A fresh browser context (own storage, like a separate person) with one page at `url`.
 * Uncaught page errors are appended to `pageErrors`; console errors are printed.
 * `initScript` (optional) runs in the page before any of its own scripts; `beforeGoto(page)`
 * (optional) runs before navigation, e.g. to listen to the page's WebSocket frames.
 */
export async function openPerson(browser, label, url, { pageErrors = [], viewport = { width: 1280, height: 800 }, initScript, beforeGoto } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  context.setDefaultNavigationTimeout(WAIT_MS);
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') console.log(`[${label} console.error] ${msg.text()}`);
  });
  if (beforeGoto) await beforeGoto(page);
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  return page;
}

/**
 * Registers the file's before/after hooks: one real server and one Chromium for all its tests.
 * Returns `{ server, browser, pageErrors }`, filled in once `before` has run.
 */
export function useServerAndBrowser() {
  const env = { server: null, browser: null, pageErrors: [] };
  before(async () => {
    assert.ok(YOOM_BIN, 'set YOOM_BIN to the yoom server binary, e.g. YOOM_BIN=../../target/debug/yoom');
    mkdirSync(SCREENSHOT_DIR, { recursive: true });
    env.server = await startServer();
    env.browser = await launchBrowser();
  }, { timeout: SERVER_START_MS + BROWSER_LAUNCH_MS + 5_000 });

  after(async () => {
    await Promise.race([env.browser?.close(), sleep(SERVER_STOP_MS)]).catch(() => {});
    if (env.server) await stopServer(env.server);
  }, { timeout: 3 * SERVER_STOP_MS });
  return env;
}
