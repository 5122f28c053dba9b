// Browser test: the /admin page (docs/api.md) against a real yoom server started with an admin
// token. Two people join "ops" by link with fake camera and microphone; a third page opens /admin,
// is refused with a wrong token (the 401 message), signs in, and sees the room with both members
// and their tracks. Muting alice's audio from the page stops forwarding it and shows on bob's
// page; kicking bob removes him from the admin page and from alice's member list, and bob's page
// shows that he was removed and stays out; closing the room sends alice back to the lobby.
//
//   unshare -rn bash -c 'ip link set lo up && YOOM_BIN=../../target/debug/yoom node --test admin.test.mjs'
//
// Env: YOOM_BIN (required), SCREENSHOT_DIR (admin-*.png go there), CHROMIUM; see harness.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  YOOM_BIN, SCREENSHOT_DIR, SERVER_START_MS, SERVER_STOP_MS, BROWSER_LAUNCH_MS, WAIT_MS,
  startServer, stopServer, launchBrowser, eventually, openPerson, sleep,
} from './harness.mjs';

const TEST_MS = 150_000;
const ROOM = 'ops';
const TOKEN = randomBytes(24).toString('hex'); // the server wants at least 16 characters
const JOIN_MS = 15_000; // link → room view with both members
const MEDIA_UP_MS = 30_000; // both members' tracks listed with video bitrate above zero
const REFRESH_MS = 2_000; // the admin page's refresh period
const UPDATE_MS = REFRESH_MS + 4_000; // an action's effect visible on the admin page
const STAYS_OUT_MS = 5_000; // a kicked member's client must not re-join within this (its reconnect backoff starts at 0.5 s)

// Runs in every client page before the app: records the error toasts the app shows (they vanish
// after a few seconds) and the close code of every signaling socket.
function spy() {
  const errorToasts = [];
  const closeCodes = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('close', (ev) => closeCodes.push(ev.code));
    }
  };
  window.__test = { errorToasts, closeCodes };
  const watch = () => new MutationObserver((records) => {
    for (const r of records) {
      for (const node of r.addedNodes) {
        if (node.nodeType === 1 && node.matches('[data-testid="error-toast"]')) errorToasts.push(node.textContent.trim());
      }
    }
  }).observe(document.body, { childList: true, subtree: true });
  if (document.body) watch();
  else document.addEventListener('DOMContentLoaded', watch);
}

const pageErrors = [];
let server = null;
let browser = null;

before(async () => {
  assert.ok(YOOM_BIN, 'set YOOM_BIN to the yoom server binary, e.g. YOOM_BIN=../../target/debug/yoom');
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  server = await startServer(['--admin-token', TOKEN]);
  browser = await launchBrowser();
}, { timeout: SERVER_START_MS + BROWSER_LAUNCH_MS + 5_000 });

after(async () => {
  await Promise.race([browser?.close(), sleep(SERVER_STOP_MS)]).catch(() => {});
  if (server) await stopServer(server);
}, { timeout: 3 * SERVER_STOP_MS });

test('admin page: token prompt and 401, rooms with members and tracks, mute, kick, close', { timeout: TEST_MS }, async () => {
  try {
    await adminPage();
  } catch (err) {
    console.log(`--- yoom server log (tail) ---\n${server.log().slice(-12000)}\n--- end of log ---`);
    throw err;
  }
});

const memberNames = async (page) =>
  (await page.locator('[data-testid="member-item"] [data-testid="member-name"]').allTextContents()).map((s) => s.trim()).sort();

const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** What the admin page shows: room → [{ id, name, audioMuted, tracks: [{ kind, codec, kbps, serverMuted }] }]. */
function readAdmin() {
  const rooms = {};
  for (const room of document.querySelectorAll('[data-testid="admin-room"]')) {
    rooms[room.dataset.room] = [...room.querySelectorAll('[data-testid="admin-member"]')].map((m) => ({
      id: m.dataset.memberId,
      name: m.querySelector('[data-testid="admin-member-name"]').textContent.trim(),
      audioMuted: m.dataset.audioMuted,
      muteAudioLabel: m.querySelector('[data-testid="admin-mute-audio"]').textContent.trim(),
      tracks: [...m.querySelectorAll('[data-testid="admin-track"]')].map((t) => ({
        kind: t.dataset.kind,
        codec: t.querySelector('[data-testid="admin-track-codec"]').textContent.trim(),
        kbps: t.dataset.kbps === '' ? null : Number(t.dataset.kbps),
        serverMuted: t.dataset.serverMuted,
      })),
    }));
  }
  return rooms;
}

async function adminPage() {
  const t0 = Date.now();
  const step = (what) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}`);
  const base = server.url;
  const shot = (page, name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, name), timeout: WAIT_MS, animations: 'disabled' });

  // The contract underneath the page: no token, no API; the page itself loads without one.
  const noToken = await fetch(`${base}/api/rooms`);
  assert.equal(noToken.status, 401, 'GET /api/rooms without a token');
  assert.match(noToken.headers.get('www-authenticate') ?? '', /^Bearer/, 'a 401 names the Bearer scheme');
  const pageRes = await fetch(`${base}/admin`);
  assert.equal(pageRes.status, 200, 'GET /admin');
  assert.match(await pageRes.text(), /admin\.js/, '/admin serves the admin page');

  // 1. alice and bob join "ops" by link.
  const people = {};
  for (const name of ['alice', 'bob']) {
    people[name] = await openPerson(browser, name, `${base}/?room=${ROOM}&name=${name}`, { pageErrors, initScript: spy });
  }
  const { alice, bob } = people;
  for (const [name, page] of Object.entries(people)) {
    await page.locator('[data-testid="room-view"]').waitFor({ state: 'visible', timeout: JOIN_MS });
    await eventually(async () => sameList(await memberNames(page), ['alice', 'bob']), `${name}'s member list to show alice and bob`, JOIN_MS);
  }
  step('alice and bob in the room');

  // 2. The admin page asks for the token; a wrong one gets the 401 message and no dashboard.
  const admin = await openPerson(browser, 'admin', `${base}/admin`, { pageErrors });
  await admin.locator('[data-testid="admin-login"]').waitFor({ state: 'visible' });
  assert.ok(!(await admin.locator('[data-testid="admin-dashboard"]').isVisible()), 'no dashboard before a token');
  await admin.locator('[data-testid="admin-token-input"]').fill(`wrong-${TOKEN}`);
  await admin.locator('[data-testid="admin-token-submit"]').click();
  const authError = admin.locator('[data-testid="admin-auth-error"]');
  await eventually(async () => /401/.test(await authError.textContent()), 'the 401 message after a wrong token');
  assert.match(await authError.textContent(), /did not accept this token/, `the 401 message says the token was refused: ${await authError.textContent()}`);
  assert.ok(await admin.locator('[data-testid="admin-login"]').isVisible(), 'the token prompt stays after a 401');
  assert.ok(!(await admin.locator('[data-testid="admin-dashboard"]').isVisible()), 'no dashboard after a 401');
  assert.equal(await admin.evaluate(() => sessionStorage.getItem('yoom.adminToken')), null, 'a refused token is not kept');
  await shot(admin, 'admin-401.png');
  step('wrong token refused with the 401 message');

  // 3. The right token: room "ops" with alice and bob, each with audio and video tracks.
  await admin.locator('[data-testid="admin-token-input"]').fill(TOKEN);
  await admin.locator('[data-testid="admin-token-submit"]').click();
  await admin.locator('[data-testid="admin-dashboard"]').waitFor({ state: 'visible' });
  await eventually(async () => {
    const ops = (await admin.evaluate(readAdmin))[ROOM];
    return ops && sameList(ops.map((m) => m.name).sort(), ['alice', 'bob']);
  }, 'the admin page to list room "ops" with alice and bob');
  assert.equal(await authError.textContent(), '', 'no auth error once signed in');
  let seen = {};
  await eventually(async () => {
    seen = await admin.evaluate(readAdmin);
    return (seen[ROOM] ?? []).length === 2 && seen[ROOM].every((m) => {
      const audio = m.tracks.find((t) => t.kind === 'audio');
      const video = m.tracks.find((t) => t.kind === 'video');
      return audio && video && /opus/i.test(audio.codec) && video.codec !== '—' && video.kbps > 0;
    });
  }, () => `each member's audio (Opus) and video tracks with video bitrate > 0: ${JSON.stringify(seen)}`, MEDIA_UP_MS, 250);
  const ids = Object.fromEntries(seen[ROOM].map((m) => [m.name, m.id]));
  assert.ok(ids.alice && ids.bob && ids.alice !== ids.bob, `member ids shown: ${JSON.stringify(ids)}`);
  await sleep(REFRESH_MS + 500); // one more refresh, so the picture shows settled bitrates
  await shot(admin, 'admin-room.png');
  step(`admin page lists ops: ${JSON.stringify(seen[ROOM])}`);

  // The token is kept for the tab: a reload goes straight to the dashboard.
  await admin.reload({ waitUntil: 'domcontentloaded' });
  await admin.locator(`[data-testid="admin-room"][data-room="${ROOM}"]`).waitFor({ state: 'visible' });
  assert.ok(!(await admin.locator('[data-testid="admin-login"]').isVisible()), 'no token prompt after a reload');

  // 4. Mute alice's audio on the server: the page shows it, bob's page shows alice muted; unmute.
  const row = (name) => admin.locator(`[data-testid="admin-member"][data-member-id="${ids[name]}"]`);
  await row('alice').locator('[data-testid="admin-mute-audio"]').click();
  await eventually(async () => {
    const a = (await admin.evaluate(readAdmin))[ROOM]?.find((m) => m.id === ids.alice);
    return a && a.muteAudioLabel === 'Unmute audio' && a.tracks.filter((t) => t.kind === 'audio').every((t) => t.serverMuted === 'true');
  }, "alice's audio shown as muted by the server", UPDATE_MS);
  const aliceAtBob = bob.locator(`[data-testid="member-item"][data-member-id="${ids.alice}"]`);
  await aliceAtBob.locator('[aria-label="Microphone muted"]').waitFor({ state: 'visible', timeout: UPDATE_MS });
  await shot(admin, 'admin-muted.png');
  await row('alice').locator('[data-testid="admin-mute-audio"]').click();
  await eventually(async () => {
    const a = (await admin.evaluate(readAdmin))[ROOM]?.find((m) => m.id === ids.alice);
    return a && a.muteAudioLabel === 'Mute audio' && a.tracks.filter((t) => t.kind === 'audio').every((t) => t.serverMuted === 'false');
  }, "alice's audio forwarded again", UPDATE_MS);
  step('server-side mute and unmute of alice\'s audio');

  // 5. Kick bob, confirming in the dialog.
  await row('bob').locator('[data-testid="admin-kick"]').click();
  const confirm = admin.locator('[data-testid="admin-confirm"]');
  await confirm.waitFor({ state: 'visible' });
  assert.match(await confirm.textContent(), /bob/, 'the confirmation names bob');
  const kickedAt = Date.now();
  await confirm.locator('[data-testid="admin-confirm-ok"]').click();
  await eventually(async () => {
    const ops = (await admin.evaluate(readAdmin))[ROOM] ?? [];
    return sameList(ops.map((m) => m.name), ['alice']);
  }, 'bob to disappear from the admin page', UPDATE_MS);
  await eventually(async () => sameList(await memberNames(alice), ['alice']), "bob to disappear from alice's member list", UPDATE_MS);
  step(`bob kicked; gone from the admin page and alice's list after ${Date.now() - kickedAt} ms`);

  // bob's page says so, its socket was closed with 4001, and it does not walk back in.
  const bobState = () => bob.evaluate(() => window.__test);
  await eventually(async () => (await bobState()).closeCodes.includes(4001), async () => `bob's socket to be closed with 4001 (saw ${JSON.stringify((await bobState().catch(() => ({}))).closeCodes)})`, UPDATE_MS);
  await eventually(async () => (await bobState()).errorToasts.some((t) => /kick|removed/i.test(t)),
    "bob's page to show that he was kicked", UPDATE_MS);
  await bob.locator('[data-testid="lobby"]').waitFor({ state: 'visible', timeout: UPDATE_MS });
  await shot(bob, 'admin-kicked-bob.png');
  await sleep(STAYS_OUT_MS);
  assert.ok(await bob.locator('[data-testid="lobby"]').isVisible(), 'bob stays in the lobby');
  assert.ok(sameList(await memberNames(alice), ['alice']), `bob did not re-join (alice sees ${await memberNames(alice)})`);
  assert.ok(sameList(((await admin.evaluate(readAdmin))[ROOM] ?? []).map((m) => m.name), ['alice']), 'the admin page still lists only alice');
  step(`bob's page: ${JSON.stringify(await bobState())}`);

  // 6. Close the room: alice is back in the lobby, connected; the admin page shows no rooms.
  await admin.locator(`[data-testid="admin-room"][data-room="${ROOM}"] [data-testid="admin-close-room"]`).click();
  await confirm.waitFor({ state: 'visible' });
  await confirm.locator('[data-testid="admin-confirm-ok"]').click();
  await alice.locator('[data-testid="lobby"]').waitFor({ state: 'visible', timeout: UPDATE_MS });
  await alice.locator('[data-testid="connection-state"][data-state="open"]').waitFor({ state: 'visible' });
  await admin.locator('[data-testid="admin-rooms-empty"]').waitFor({ state: 'visible', timeout: UPDATE_MS });
  assert.equal(await admin.locator('[data-testid="admin-room"]').count(), 0, 'no rooms listed after closing ops');
  assert.equal(await admin.locator('[data-testid="admin-error"]').count(), 0, 'no errors shown on the admin page');
  await shot(admin, 'admin-empty.png');
  step('room closed');

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
}
