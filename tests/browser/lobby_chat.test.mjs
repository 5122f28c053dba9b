// Browser test: lobby, shareable room links, live member counts and chat, in headless Chromium
// against a real yoom server.
//
//   YOOM_BIN=../../target/debug/yoom node --test lobby_chat.test.mjs
//
// Env: YOOM_BIN (required) the server binary; SCREENSHOT_DIR (default ../../target/browser,
// relative to this folder) where PNGs of the lobby and the room view are written;
// CHROMIUM (default /usr/bin/chromium). Server start, Chromium launch and bounded waits live in
// harness.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  useServerAndBrowser,
  SCREENSHOT_DIR, WAIT_MS, eventually, sleep, openPerson as openPersonIn,
} from './harness.mjs';

const TEST_MS = 120_000;
const MEDIA_SETTLE_MS = 8_000;

const memberNames = async (page) =>
  (await page.locator('[data-testid="member-item"] [data-testid="member-name"]').allTextContents()).map((s) => s.trim()).sort();

const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The member count shown in the lobby for `room`, or null when the room is not listed. */
async function lobbyCount(page, room) {
  const item = page.locator(`[data-testid="room-item"][data-room="${room}"]`);
  if ((await item.count()) === 0) return null;
  return (await item.locator('[data-testid="room-count"]').textContent({ timeout: 1000 })).trim();
}

async function visible(page, testId) {
  return page.locator(`[data-testid="${testId}"]`).isVisible();
}

const env = useServerAndBrowser();
const { pageErrors } = env;

/** A fresh browser context (own storage, like a separate person) with one page. */
const openPerson = (label, url, viewport) => openPersonIn(env.browser, label, url, { pageErrors, viewport });

test('lobby lists rooms live; room links, member lists and chat work across browsers', { timeout: TEST_MS }, async () => {
  try {
    await lobbyAndChat();
  } catch (err) {
    // The server's log usually says why a UI expectation was not met.
    console.log(`--- yoom server log (tail) ---\n${env.server.log().slice(-8000)}\n--- end of log ---`);
    throw err;
  }
});

async function lobbyAndChat() {
  const base = env.server.url;
  const shot = (page, name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, name), timeout: WAIT_MS, animations: 'disabled' });

  // A: the lobby, connected, with no rooms yet.
  const alice = await openPerson('A', `${base}/`);
  await alice.locator('[data-testid="lobby"]').waitFor({ state: 'visible' });
  await alice.locator('[data-testid="connection-state"][data-state="open"]').waitFor({ state: 'visible' });
  await alice.locator('[data-testid="rooms-empty"]').waitFor({ state: 'visible' });
  assert.equal(await alice.locator('[data-testid="room-item"]').count(), 0, 'a fresh server lists no rooms');
  for (const id of ['nickname-input', 'room-input', 'join-button']) {
    assert.ok(await visible(alice, id), `lobby shows ${id}`);
  }
  await shot(alice, 'lobby-empty.png');

  // B and C arrive through shareable links, skipping the lobby.
  const bob = await openPerson('B', `${base}/?room=team&name=bob`);
  const carol = await openPerson('C', `${base}/?room=team&name=carol`);
  for (const [page, who] of [[bob, 'bob'], [carol, 'carol']]) {
    await page.locator('[data-testid="room-view"]').waitFor({ state: 'visible' });
    await eventually(async () => sameList(await memberNames(page), ['bob', 'carol']), `${who}'s member list to show bob and carol`);
    assert.equal((await page.locator('[data-testid="room-name"]').textContent()).trim(), 'team');
    assert.match(page.url(), /[?&]room=team(&|$)/, `${who}'s URL names the room`);
    const self = page.locator('[data-testid="member-item"]', { hasText: '(you)' });
    assert.equal((await self.locator('[data-testid="member-name"]').textContent()).trim(), who, `${who} is marked as "(you)"`);
    await eventually(async () => (await page.locator('[data-testid="video-tile"][data-member-id]').count()) === 2, `${who} to see two tiles`);
  }

  // A's lobby updates by itself.
  await eventually(async () => (await lobbyCount(alice, 'team')) === '2', 'the lobby to list "team" with 2 members');
  assert.ok(!(await alice.locator('[data-testid="rooms-empty"]').isVisible()), 'empty state hidden once a room exists');

  // Chat from B reaches C with the sender name; B sees it as its own.
  const text = `Hello from bob, ${Date.now()}`;
  await bob.locator('[data-testid="chat-input"]').fill(text);
  await bob.locator('[data-testid="chat-input"]').press('Enter');
  const atCarol = carol.locator('[data-testid="chat-message"]', { hasText: text });
  await atCarol.waitFor({ state: 'visible' });
  assert.equal((await atCarol.locator('[data-testid="chat-sender"]').textContent()).trim(), 'bob');
  assert.equal(await atCarol.getAttribute('data-own'), 'false');
  assert.match((await atCarol.locator('time').textContent()).trim(), /^\d{2}:\d{2}$/, 'local time as HH:MM');
  const atBob = bob.locator('[data-testid="chat-message"]', { hasText: text });
  await atBob.waitFor({ state: 'visible' });
  assert.equal(await atBob.getAttribute('data-own'), 'true', 'own message is marked as own');
  assert.equal(await bob.locator('[data-testid="chat-input"]').inputValue(), '', 'composer cleared after sending');
  await carol.locator('[data-testid="chat-input"]').fill('Hi bob! Good to see you.');
  await carol.locator('[data-testid="chat-send"]').click();
  await bob.locator('[data-testid="chat-message"]', { hasText: 'Hi bob!' }).waitFor({ state: 'visible' });

  // Screenshots of the room, desktop and phone width, and the lobby with a live room.
  // With a media-capable server, give remote video a moment so the picture shows it (media itself
  // is asserted by the media tests, not here).
  if ((await bob.locator('body').getAttribute('data-media')) === 'on') {
    await eventually(
      async () => (await bob.locator('[data-testid="video-tile"]:not(.has-video)').count()) === 0,
      'video in every tile (best effort, for the screenshot)',
      MEDIA_SETTLE_MS,
    ).catch((err) => console.log(`note: ${err.message}`));
  }
  await shot(bob, 'room-desktop.png');
  await bob.setViewportSize({ width: 390, height: 844 });
  await sleep(300); // let the grid re-layout after the resize
  await shot(bob, 'room-phone.png');
  await bob.locator('[data-testid="chat-toggle"]').click();
  await bob.locator('[data-testid="chat-input"]').waitFor({ state: 'visible' });
  await shot(bob, 'room-phone-chat.png');
  await bob.locator('[data-testid="chat-toggle"]').click({ force: true }).catch(() => {});
  await bob.setViewportSize({ width: 1280, height: 800 });
  await shot(alice, 'lobby.png');

  // C leaves: back to the lobby with a clean URL; B and A see it live.
  await carol.locator('[data-testid="leave-button"]').click();
  await carol.locator('[data-testid="lobby"]').waitFor({ state: 'visible' });
  assert.doesNotMatch(carol.url(), /room=/, 'leaving clears the room from the URL');
  await eventually(async () => sameList(await memberNames(bob), ['bob']), "carol to drop from bob's member list");
  await eventually(async () => (await bob.locator('[data-testid="video-tile"]').count()) === 1, "carol's tile to disappear");
  await eventually(async () => (await lobbyCount(alice, 'team')) === '1', 'the lobby count of "team" to drop to 1');

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
}
