// Browser test: media through a real TURN relay. A real coturn (`turnserver`) and the real yoom
// server run side by side; two people open the room link with `?relay=1` (iceTransportPolicy
// 'relay'), so their only candidates are coturn relay addresses: if they see each other, media
// went through coturn. A second case gives yoom the wrong TURN secret: coturn answers 401, and the
// page must say so in words and show no remote video.
//
//   unshare -n bash -c 'ip link set lo up && YOOM_BIN=../../target/debug/yoom node --test turn_relay.test.mjs'
//
// Run it inside a loopback-only network namespace (shared/LAB.md): coturn listens on 127.0.0.1 and
// relays from 127.0.0.1, Chromium gathers only loopback candidates, nothing leaves the machine.
// Env: YOOM_BIN (required), SCREENSHOT_DIR (turn-relay-room.png and turn-401.png go there),
// CHROMIUM (see harness.mjs), TURNSERVER (default: turnserver on PATH; tests/support/browser-deps.sh
// installs coturn when it is missing).
//
// How the relay is proven, without any hook in the app: an init script wraps RTCPeerConnection
// (as media_room.test.mjs does) so the test can read each connection's configuration, getStats()
// and icecandidateerror events. Every connection's selected candidate pair must have a local
// candidate of type `relay`, and coturn's own log must show an allocation for each member's
// ephemeral username (`<expiry>:<member id>`).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  YOOM_BIN, SCREENSHOT_DIR, SERVER_STOP_MS, BROWSER_LAUNCH_MS, WAIT_MS,
  startServer, stopServer, launchBrowser, eventually, openPerson, sleep,
} from './harness.mjs';

const TURNSERVER = process.env.TURNSERVER || 'turnserver';
const TEST_MS = 60_000;
const TURN_START_MS = 10_000; // coturn answering a STUN Binding request
const JOIN_MS = 15_000; // link → room view with both tiles
const MEDIA_UP_MS = 25_000; // first decoded frames (relay allocation + ICE + DTLS + keyframe)
const FLOW_MS = 10_000; // framesDecoded rising by MIN_NEW_FRAMES
const MIN_NEW_FRAMES = 10;
const NO_VIDEO_MS = 4_000; // how long a blocked page is watched for video that must not come
const LOG_KEEP_CHARS = 512 * 1024;

// ---- coturn ------------------------------------------------------------------------------------

/** A UDP port that was free a moment ago on 127.0.0.1. */
function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

/** Whether a STUN Binding request (RFC 8489) to 127.0.0.1:`port` gets an answer within `ms`. */
function stunAnswers(port, ms = 500) {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    const request = Buffer.alloc(20);
    request.writeUInt16BE(0x0001, 0); // Binding request, no attributes
    request.writeUInt32BE(0x2112a442, 4); // magic cookie
    randomBytes(12).copy(request, 8); // transaction id
    const done = (ok) => {
      clearTimeout(timer);
      socket.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), ms);
    socket.on('message', (msg) => done(msg.length >= 20 && msg.subarray(8, 20).equals(request.subarray(8, 20))));
    socket.on('error', () => done(false));
    socket.send(request, port, '127.0.0.1');
  });
}

/**
 * Starts a real coturn on 127.0.0.1 with the TURN REST API secret `secret` (the LAB.md
 * configuration, plus `verbose` so every allocation is logged); resolves once it answers STUN.
 * The result has `url` (turn:…?transport=udp), `child`, `log()` and `stop()`.
 */
async function startCoturn(secret, { loopbackPeers = true } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'yoom-coturn-'));
  const port = await freeUdpPort();
  const config = path.join(dir, 'turnserver.conf');
  writeFileSync(config, [
    'listening-ip=127.0.0.1',
    `listening-port=${port}`,
    'relay-ip=127.0.0.1',
    'min-port=50000',
    'max-port=50999',
    'fingerprint',
    'use-auth-secret',
    `static-auth-secret=${secret}`,
    'realm=yoom.test',
    'no-tls',
    'no-dtls',
    ...(loopbackPeers ? ['allow-loopback-peers'] : []), // the peer (yoom) is on loopback; needs no-cli
    'no-multicast-peers',
    'no-cli',
    `pidfile=${path.join(dir, 'turnserver.pid')}`,
    `userdb=${path.join(dir, 'turndb.sqlite')}`,
    'log-file=stdout',
    'verbose', // "session …: new" and "… ALLOCATE processed, success" lines
    '',
  ].join('\n'));
  const child = spawn(TURNSERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (chunk) => {
    log = (log + chunk).slice(-LOG_KEEP_CHARS);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => {
    exited = code ?? signal;
    resolve();
  }));
  child.once('error', (err) => {
    exited = err.message;
  });
  const turn = {
    url: `turn:127.0.0.1:${port}?transport=udp`,
    child,
    log: () => log,
    async stop() {
      if (exited === null) {
        child.kill('SIGTERM');
        if (!await Promise.race([exit.then(() => true), sleep(SERVER_STOP_MS).then(() => false)])) {
          child.kill('SIGKILL');
          await Promise.race([exit, sleep(SERVER_STOP_MS)]);
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await eventually(async () => {
      if (exited !== null) throw new Error(`${TURNSERVER} exited (${exited})`);
      return stunAnswers(port);
    }, () => `coturn to answer STUN on 127.0.0.1:${port}; its log:\n${log}`, TURN_START_MS, 50);
  } catch (err) {
    await turn.stop();
    throw err;
  }
  return turn;
}

// ---- pages ---------------------------------------------------------------------------------------

// Runs in every page before the app: records its peer connections with their configuration, and
// every icecandidateerror (the app's own listener is what shows them to the person).
function spy() {
  const Native = window.RTCPeerConnection;
  const pcs = [];
  const iceErrors = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      pcs.push(this);
      this.addEventListener('icecandidateerror', (ev) => iceErrors.push({ url: ev.url, code: ev.errorCode, text: ev.errorText }));
    }
  };
  window.__test = { pcs, iceErrors };
}

/**
 * Each open peer connection of the page: its role (the publish connection is the one that offers;
 * the subscribe one answers the server's offers), configuration, state, the local and remote candidate of the
 * selected pair, and video frames decoded (subscribe only).
 */
function connections(page) {
  return page.evaluate(async () => Promise.all(window.__test.pcs.filter((pc) => pc.signalingState !== 'closed').map(async (pc) => {
    const stats = new Map();
    (await pc.getStats()).forEach((s) => stats.set(s.id, s));
    const all = [...stats.values()];
    const transport = all.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport ? stats.get(transport.selectedCandidatePairId) : all.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
    const candidate = (id) => {
      const c = id && stats.get(id);
      return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol, url: c.url } : null;
    };
    const config = pc.getConfiguration();
    return {
      role: pc.localDescription?.type === 'offer' ? 'publish' : 'subscribe',
      policy: config.iceTransportPolicy,
      iceServers: config.iceServers.map((s) => ({ urls: [].concat(s.urls), username: s.username })),
      state: pc.connectionState,
      local: candidate(pair?.localCandidateId),
      remote: candidate(pair?.remoteCandidateId),
      bytesSent: pair?.bytesSent ?? 0,
      bytesReceived: pair?.bytesReceived ?? 0,
      framesDecoded: all.filter((s) => s.type === 'inbound-rtp' && s.kind === 'video').reduce((n, s) => n + (s.framesDecoded ?? 0), 0),
    };
  })));
}

/** The remote tiles of the page: member id and the size of the video they play. */
function remoteTiles(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="video-tile"]:not([data-self="true"])')].map((tile) => {
    const video = tile.querySelector('video');
    return { id: tile.dataset.memberId, videoWidth: video?.videoWidth ?? 0, hasVideo: tile.classList.contains('has-video') };
  }));
}

/** Opens `name`'s page at the room link (relay-only unless `relay: false`) and waits for the room
 * view; returns `{ page, id }` (id: the member id). The page is closed by withTurnAndServer. */
async function join(env, server, room, name, { relay = true } = {}) {
  const page = await openPerson(env.browser, name, `${server.url}/?room=${room}&name=${name}${relay ? '&relay=1' : ''}`, {
    pageErrors: env.pageErrors,
    initScript: spy,
  });
  env.pages.push(page);
  await page.locator('[data-testid="room-view"]').waitFor({ state: 'visible', timeout: JOIN_MS });
  assert.equal(await page.locator('body').getAttribute('data-media'), 'on', `${name}: the server forwards media`);
  const id = await page.locator('[data-testid="video-tile"][data-self="true"]').getAttribute('data-member-id');
  return { page, id };
}

/** coturn's log lines for the ephemeral username of `memberId` (`<unix expiry>:<member id>`). */
const userLines = (turn, memberId) => turn.log().split('\n').filter((l) => /user <\d+:/.test(l) && l.includes(`:${memberId}>`));

// ---- tests ---------------------------------------------------------------------------------------

const env = { browser: null, pageErrors: [], pages: [] };
before(async () => {
  assert.ok(YOOM_BIN, 'set YOOM_BIN to the yoom server binary, e.g. YOOM_BIN=../../target/debug/yoom');
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  env.browser = await launchBrowser();
}, { timeout: BROWSER_LAUNCH_MS + 5_000 });
after(async () => {
  await Promise.race([env.browser?.close(), sleep(SERVER_STOP_MS)]).catch(() => {});
}, { timeout: 2 * SERVER_STOP_MS });

/** Runs `body(turn, server)` with a fresh coturn (secret `turnSecret`) and a yoom server handing
 * out credentials made with `yoomSecret`; prints both logs if it fails; stops everything after. */
async function withTurnAndServer(turnSecret, yoomSecret, body, turnOptions) {
  const turn = await startCoturn(turnSecret, turnOptions);
  let server = null;
  try {
    server = await startServer(['--turn-urls', turn.url, '--turn-secret', yoomSecret]);
    await body(turn, server);
  } catch (err) {
    console.log(`--- coturn log (tail) ---\n${turn.log().slice(-8000)}\n--- yoom server log (tail) ---\n${server?.log().slice(-8000)}\n--- end of logs ---`);
    throw err;
  } finally {
    await Promise.all(env.pages.splice(0).map((page) => page.context().close().catch(() => {})));
    if (server) await stopServer(server);
    await turn.stop();
  }
}

test('two relay-only people see each other through coturn', { timeout: TEST_MS }, async () => {
  const secret = randomBytes(16).toString('hex');
  await withTurnAndServer(secret, secret, async (turn, server) => {
    const ann = await join(env, server, 'relay', 'ann');
    const bob = await join(env, server, 'relay', 'bob');
    const people = { ann, bob };
    const otherOf = { ann: bob, bob: ann };

    // Each sees the other's video, decoded and still flowing.
    for (const [name, { page }] of Object.entries(people)) {
      let seen = null;
      await eventually(async () => {
        const tiles = await remoteTiles(page);
        const sub = (await connections(page)).find((c) => c.role === 'subscribe');
        seen = { tiles, sub };
        return tiles.length === 1 && tiles[0].id === otherOf[name].id && tiles[0].hasVideo && tiles[0].videoWidth > 0 && sub?.framesDecoded > 0;
      }, () => `${name} to show the other's video: ${JSON.stringify(seen)}`, MEDIA_UP_MS, 250);
      const start = seen.sub.framesDecoded;
      let now = start;
      await eventually(async () => {
        now = (await connections(page)).find((c) => c.role === 'subscribe')?.framesDecoded ?? 0;
        return now - start >= MIN_NEW_FRAMES;
      }, () => `${name}'s decoded frames to rise by ${MIN_NEW_FRAMES} (from ${start}, now ${now})`, FLOW_MS, 250);
    }

    // Both connections of each page are relay-only, use the credentials minted for that member,
    // and carry their traffic between a coturn relay candidate and the server's host candidate.
    for (const [name, { page, id }] of Object.entries(people)) {
      let conns = [];
      await eventually(async () => {
        conns = await connections(page);
        return conns.length === 2 && conns.every((c) => c.state === 'connected' && c.local);
      }, () => `${name}'s publish and subscribe connections to be connected: ${JSON.stringify(conns)}`);
      for (const c of conns) {
        const what = `${name}'s ${c.role} connection`;
        assert.equal(c.policy, 'relay', `${what} is relay-only (?relay=1)`);
        const turnServer = c.iceServers.find((s) => s.urls.includes(turn.url));
        assert.ok(turnServer, `${what} has the TURN server from joined: ${JSON.stringify(c.iceServers)}`);
        assert.ok(/^\d+:/.test(turnServer.username) && turnServer.username.endsWith(`:${id}`), `${what}: TURN username ${turnServer.username} is <expiry>:<member id>`);
        assert.equal(c.local.type, 'relay', `${what}: the selected pair's local candidate is a relay one: ${JSON.stringify(c)}`);
        assert.equal(c.local.address, '127.0.0.1', `${what}: relay address from coturn's relay-ip`);
        assert.equal(c.remote.address, '127.0.0.1', `${what}: the remote end is the server: ${JSON.stringify(c.remote)}`);
        assert.ok(c.bytesSent > 0 && c.bytesReceived > 0, `${what}: traffic both ways on the selected pair: ${JSON.stringify(c)}`);
      }
      // coturn saw this member: an allocation with their ephemeral username, and a permission or
      // channel for the server's address (what relaying to it takes).
      const lines = userLines(turn, id);
      assert.ok(lines.some((l) => l.includes('incoming packet ALLOCATE processed, success')),
        `coturn allocated a relay for ${name} (user <…:${id}>): ${lines.slice(0, 20).join('\n')}`);
      assert.ok(lines.some((l) => /incoming packet (CREATE_PERMISSION|CHANNEL_BIND) processed, success/.test(l)),
        `coturn let ${name} relay to a peer: ${lines.slice(0, 20).join('\n')}`);
      assert.ok(!lines.some((l) => l.includes('error 401')), `coturn never refused ${name}'s credentials`);
      assert.equal(await page.locator('[data-testid="media-error"]').isVisible(), false, `${name} shows no media error`);
      assert.deepEqual(await page.evaluate(() => window.__test.iceErrors), [], `${name}: no ICE server errors`);
    }
    await ann.page.screenshot({ path: path.join(SCREENSHOT_DIR, 'turn-relay-room.png'), timeout: WAIT_MS });
  });
  assert.deepEqual(env.pageErrors.splice(0), [], 'no uncaught errors in the pages');
});

test('a wrong TURN secret: coturn answers 401 and the page says so, with no remote video', { timeout: TEST_MS }, async () => {
  await withTurnAndServer('coturn-secret', 'not-the-coturn-secret', async (turn, server) => {
    // ann is relay-only; bob (not relay-only) publishes directly to the server, so there is video
    // in the room that ann would receive if her connections could get through.
    const ann = await join(env, server, 'refused', 'ann');
    const bob = await join(env, server, 'refused', 'bob', { relay: false });

    const error = ann.page.locator('[data-testid="media-error"] [data-testid="turn-error"][data-code="401"]');
    await error.waitFor({ state: 'visible', timeout: WAIT_MS });
    assert.match(await error.textContent(), /TURN server refused the credentials \(401\)/, 'the page names the problem in words');
    const iceErrors = await ann.page.evaluate(() => window.__test.iceErrors);
    assert.ok(iceErrors.some((e) => e.code === 401 && e.url === turn.url), `Chromium reported 401 from ${turn.url}: ${JSON.stringify(iceErrors)}`);

    // coturn refused ann's credentials: a 401 on a request that carried her username (the first,
    // credential-less 401 of every allocation is the normal challenge, with user <>).
    await eventually(() => userLines(turn, ann.id).some((l) => l.includes('error 401')),
      () => `coturn to log a 401 for ann (user <…:${ann.id}>): ${userLines(turn, ann.id).slice(0, 10).join('\n')}`);
    assert.ok(!userLines(turn, ann.id).some((l) => l.includes('ALLOCATE processed, success')), 'coturn allocated nothing for ann');

    // bob's tile is on ann's page but his video never plays there, and her connections never connect.
    await eventually(async () => (await remoteTiles(ann.page)).some((t) => t.id === bob.id), "ann to show bob's tile");
    const until = Date.now() + NO_VIDEO_MS;
    while (Date.now() < until) {
      const tiles = await remoteTiles(ann.page);
      const conns = await connections(ann.page);
      assert.ok(tiles.every((t) => t.videoWidth === 0), `ann plays no remote video: ${JSON.stringify(tiles)}`);
      assert.ok(conns.every((c) => c.state !== 'connected' && !c.local && c.framesDecoded === 0), `ann's connections carry nothing: ${JSON.stringify(conns)}`);
      await sleep(250);
    }
    assert.ok(await error.isVisible(), 'the TURN error stays on screen');
    assert.equal(await bob.page.locator('[data-testid="media-error"]').isVisible(), false,
      'bob (not relay-only) connects directly, so the refused relay is not worth a banner');
    await ann.page.screenshot({ path: path.join(SCREENSHOT_DIR, 'turn-401.png'), timeout: WAIT_MS });
  });
  assert.deepEqual(env.pageErrors.splice(0), [], 'no uncaught errors in the pages');
});


test('coturn forbids relaying to the server (403): the page says the media connection failed', { timeout: TEST_MS }, async () => {
  // Without allow-loopback-peers coturn allocates a relay but refuses a permission towards the
  // server's 127.0.0.1 (as a production coturn whose denied-peer-ip covers the SFU's address
  // would): Chromium prunes the only candidate pair, and the connection fails.
  const secret = randomBytes(16).toString('hex');
  await withTurnAndServer(secret, secret, async (turn, server) => {
    const ann = await join(env, server, 'forbidden', 'ann');
    const failed = ann.page.locator('[data-testid="media-error"] [data-testid="media-failed"]');
    await failed.waitFor({ state: 'visible', timeout: WAIT_MS });
    assert.match(await failed.textContent(), /^Media connection failed\. The others cannot see or hear you; chat still works\.$/);
    const conns = await connections(ann.page);
    assert.equal(conns.find((c) => c.role === 'publish')?.state, 'failed', `ann's publish connection failed: ${JSON.stringify(conns)}`);
    const lines = userLines(turn, ann.id);
    assert.ok(lines.some((l) => l.includes('ALLOCATE processed, success')), `coturn allocated a relay for ann: ${lines.slice(0, 10).join('\n')}`);
    assert.ok(lines.some((l) => l.includes('CREATE_PERMISSION processed, error 403')), `coturn refused ann a permission to the server: ${lines.slice(0, 10).join('\n')}`);
    await ann.page.screenshot({ path: path.join(SCREENSHOT_DIR, 'media-failed.png'), timeout: WAIT_MS });
  }, { loopbackPeers: false });
  assert.deepEqual(env.pageErrors.splice(0), [], 'no uncaught errors in the pages');
});
