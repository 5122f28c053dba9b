// Browser test: real media through the SFU. Three people (one headless Chromium, three contexts,
// fake camera and microphone) join one room by link; each must see and hear the other two, see a
// camera turned off within 3 s, and see a member who left disappear within 3 s. Then two more
// come and go one after the other, so that the server reuses the departed tracks' SSRCs, and the
// two who stayed must see and hear each newcomer.
//
//   unshare -n bash -c 'ip link set lo up && YOOM_BIN=../../target/debug/yoom node --test media_room.test.mjs'
//
// Run it inside a loopback-only network namespace (shared/LAB.md): Chromium then gathers only
// 127.0.0.1 candidates (thanks to --allow-loopback-in-peer-connection) and nothing leaves the machine.
// Env: YOOM_BIN (required), SCREENSHOT_DIR (room-3-people.png, room-after-churn.png go there), CHROMIUM; see harness.mjs.
//
// How media is observed, without any hook in the app: an init script wraps RTCPeerConnection so
// the test can find each page's subscribe connection (the one whose remote description is the
// server's offer), read its getStats() and receivers, and record the stream ids of incoming tracks.
// Each remote tile's <video>/<audio> tracks are matched to that connection's inbound-rtp stats by
// track id, so "bob's tile shows video" means bob's tile plays a track that is being decoded.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  useServerAndBrowser,
  SCREENSHOT_DIR, WAIT_MS, eventually, openPerson,
} from './harness.mjs';

const TEST_MS = 150_000;
const ROOM = 'media';
const PEOPLE = ['ann', 'bob', 'cat'];
const JOIN_MS = 15_000; // link → room view with three tiles
const MEDIA_UP_MS = 25_000; // first decoded frames on every page (ICE + DTLS + keyframes, 3 browsers, 2 cores)
const FLOW_MS = 10_000; // counters rising by the amounts below
const MIN_NEW_FRAMES = 10; // decoded video frames per tile within FLOW_MS
const MIN_NEW_AUDIO_PACKETS = 25; // 0.5 s of 20 ms Opus packets within FLOW_MS
const UPDATE_MS = 3_000; // camera-off and leave must show on the other pages within this
const RENEGOTIATE_MS = 10_000; // the server's re-offer after a leave, applied by the client

// Runs in every page before the app: records peer connections, their incoming tracks' stream ids,
// the local camera/microphone tracks, and every error toast the app shows (they disappear after a
// few seconds).
function spy() {
  const Native = window.RTCPeerConnection;
  const pcs = [];
  const trackStreams = new Map(); // track id → stream ids from the `track` event
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      pcs.push(this);
      this.addEventListener('track', (ev) => trackStreams.set(ev.track.id, ev.streams.map((s) => s.id)));
    }
  };
  const localTracks = []; // every camera/microphone track the page opened
  const md = navigator.mediaDevices;
  if (md?.getUserMedia) {
    const gum = md.getUserMedia.bind(md);
    md.getUserMedia = async (...args) => {
      const stream = await gum(...args);
      localTracks.push(...stream.getTracks());
      return stream;
    };
  }
  const errorToasts = [];
  window.__test = { pcs, trackStreams, localTracks, errorToasts };
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

/** The tiles of the page the function runs in: member id, name, what the <video> plays and its
 * size, the <audio>'s tracks, and the camera-off state. DOM only, so cheap to poll. */
function readTiles() {
  return [...document.querySelectorAll('[data-testid="video-tile"]')].map((tile) => {
    const video = tile.querySelector('video');
    const audio = tile.querySelector('audio');
    const avatar = tile.querySelector('.tile-avatar');
    const vt = video?.srcObject?.getVideoTracks?.()[0] ?? null;
    return {
      id: tile.dataset.memberId,
      self: tile.dataset.self === 'true',
      name: tile.querySelector('[data-testid="tile-name"]')?.textContent.trim(),
      hasVideo: tile.classList.contains('has-video'),
      videoMuted: tile.dataset.videoMuted ?? null,
      avatarShown: !!avatar && getComputedStyle(avatar).display !== 'none',
      initials: tile.querySelector('.tile-initials')?.textContent.trim(),
      videoWidth: video?.videoWidth ?? 0,
      videoHeight: video?.videoHeight ?? 0,
      videoPlaying: !!video && !video.paused,
      audioPlaying: !!audio && !audio.paused,
      videoTrack: vt && { id: vt.id, readyState: vt.readyState, muted: vt.muted },
      audioTracks: (audio?.srcObject?.getAudioTracks?.() ?? []).map((a) => ({ id: a.id, readyState: a.readyState })),
    };
  });
}

/**
 * Everything the test looks at on one page: the tiles, and the subscribe connection (receivers
 * with their transceiver direction and stream ids, inbound-rtp counters keyed by track id).
 */
async function snapshot(page) {
  const tiles = await page.evaluate(readTiles);
  const media = await page.evaluate(async () => {
    const t = window.__test;
    const subs = t.pcs.filter((pc) => pc.signalingState !== 'closed' && pc.remoteDescription?.type === 'offer');
    const sub = subs[subs.length - 1] ?? null;
    const inbound = {};
    if (sub) {
      const stats = await sub.getStats();
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.trackIdentifier) {
          inbound[s.trackIdentifier] = {
            kind: s.kind,
            ssrc: s.ssrc,
            mid: s.mid,
            framesDecoded: s.framesDecoded ?? 0,
            framesReceived: s.framesReceived ?? 0,
            keyFramesDecoded: s.keyFramesDecoded ?? 0,
            pliCount: s.pliCount ?? 0,
            packetsReceived: s.packetsReceived ?? 0,
          };
        }
      });
    }
    const receivers = sub
      ? sub.getTransceivers().map((tr) => ({
        kind: tr.receiver.track.kind,
        trackId: tr.receiver.track.id,
        readyState: tr.receiver.track.readyState,
        direction: tr.currentDirection,
        streams: t.trackStreams.get(tr.receiver.track.id) ?? [],
      }))
      : [];
    return {
      subscribeConnections: subs.length,
      connectionState: sub?.connectionState ?? null,
      inbound,
      receivers,
      errorToasts: [...t.errorToasts],
    };
  });
  return { tiles, ...media };
}

/** Polls `check(tiles)` on each of `pages` (name → page) at once until it holds; every page must
 * get there by `since + UPDATE_MS`. Returns name → ms after `since`. */
async function allWithin(pages, since, what, check) {
  const entries = await Promise.all(Object.entries(pages).map(async ([name, page]) => {
    let tiles = [];
    await eventually(async () => {
      tiles = await page.evaluate(readTiles);
      return check(tiles);
    }, () => `${name} ${what} (tiles: ${JSON.stringify(tiles)})`, Math.max(0, since + UPDATE_MS - Date.now()), 25);
    return [name, Date.now() - since];
  }));
  return Object.fromEntries(entries);
}

/** Problems that keep `snap` from showing live media from exactly `others` (member ids), or []. */
function mediaProblems(snap, others) {
  const problems = [];
  if (snap.subscribeConnections !== 1) problems.push(`${snap.subscribeConnections} open subscribe connections`);
  if (snap.connectionState !== 'connected') problems.push(`subscribe connection ${snap.connectionState}`);
  const remote = snap.tiles.filter((t) => !t.self);
  const remoteIds = remote.map((t) => t.id).sort();
  if (JSON.stringify(remoteIds) !== JSON.stringify([...others].sort())) problems.push(`remote tiles ${remoteIds} instead of ${[...others].sort()}`);
  const live = (kind) => snap.receivers.filter((r) => r.kind === kind && r.readyState === 'live' && r.direction === 'recvonly');
  for (const kind of ['audio', 'video']) {
    const owners = live(kind).map((r) => r.streams.join('+')).sort();
    if (JSON.stringify(owners) !== JSON.stringify([...others].sort())) problems.push(`${kind} receivers from [${owners}] instead of [${[...others].sort()}]`);
  }
  for (const tile of remote) {
    const who = `tile ${tile.name}`;
    if (!(tile.videoWidth > 0 && tile.videoHeight > 0)) problems.push(`${who}: video ${tile.videoWidth}x${tile.videoHeight} (inbound ${JSON.stringify(snap.inbound[tile.videoTrack?.id])})`);
    if (!tile.hasVideo) problems.push(`${who}: not showing video`);
    if (!tile.videoPlaying) problems.push(`${who}: <video> paused`);
    if (!tile.audioPlaying) problems.push(`${who}: <audio> paused`);
    const vt = tile.videoTrack;
    if (!vt || vt.readyState !== 'live') problems.push(`${who}: no live video track`);
    else {
      const receiver = snap.receivers.find((r) => r.trackId === vt.id);
      if (!receiver || receiver.streams[0] !== tile.id) problems.push(`${who}: plays track ${vt.id} from stream ${receiver?.streams}`);
      if (!(snap.inbound[vt.id]?.framesDecoded > 0)) problems.push(`${who}: no decoded frames`);
    }
    const audio = tile.audioTracks.filter((a) => a.readyState === 'live');
    if (audio.length !== 1) problems.push(`${who}: ${audio.length} live audio tracks`);
    for (const a of audio) {
      const receiver = snap.receivers.find((r) => r.trackId === a.id);
      if (!receiver || receiver.streams[0] !== tile.id) problems.push(`${who}: plays audio ${a.id} from stream ${receiver?.streams}`);
      if (!(snap.inbound[a.id]?.packetsReceived > 0)) problems.push(`${who}: no audio packets`);
    }
  }
  return problems;
}

/** Counters of the tracks shown in the remote tiles of `snap`: tile id → { frames, packets }. */
function counters(snap) {
  const out = {};
  for (const tile of snap.tiles.filter((t) => !t.self)) {
    out[tile.id] = {
      frames: snap.inbound[tile.videoTrack?.id]?.framesDecoded ?? 0,
      packets: snap.inbound[tile.audioTracks[0]?.id]?.packetsReceived ?? 0,
    };
  }
  return out;
}

/** Waits until every remote tile of `page` (member ids `others`) decodes MIN_NEW_FRAMES more video
 * frames and receives MIN_NEW_AUDIO_PACKETS more audio packets than at the start. */
async function mediaKeepsFlowing(page, label, others) {
  const start = counters(await snapshot(page));
  let now = {};
  await eventually(async () => {
    now = counters(await snapshot(page));
    return others.every((id) => start[id] && now[id]
      && now[id].frames - start[id].frames >= MIN_NEW_FRAMES
      && now[id].packets - start[id].packets >= MIN_NEW_AUDIO_PACKETS);
  }, () => `${label}'s remote video frames (+${MIN_NEW_FRAMES}) and audio packets (+${MIN_NEW_AUDIO_PACKETS}) to rise: from ${JSON.stringify(start)} to ${JSON.stringify(now)}`, FLOW_MS, 250);
}

const env = useServerAndBrowser();
const { pageErrors } = env;

test('three people see and hear each other; camera-off and leave show on the others within 3 s', { timeout: TEST_MS }, async () => {
  try {
    await mediaRoom();
  } catch (err) {
    console.log(`--- yoom server log (tail) ---\n${env.server.log().slice(-12000)}\n--- end of log ---`);
    throw err;
  }
});

async function mediaRoom() {
  const t0 = Date.now();
  const step = (what) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}`);

  // 1. Three people join by link. Each page's signaling messages (both ways) are kept, to check that
  // the camera-off state really travels as `mute` → server → `member_updated`.
  const pages = {};
  const frames = {}; // name → [{ at, sent?, msg }]
  for (const name of PEOPLE) {
    frames[name] = [];
    pages[name] = await openPerson(env.browser, name, `${env.server.url}/?room=${ROOM}&name=${name}`, {
      pageErrors,
      initScript: spy,
      beforeGoto: (page) => page.on('websocket', (ws) => {
        ws.on('framereceived', ({ payload }) => {
          try {
            frames[name].push({ at: Date.now(), msg: JSON.parse(payload) });
          } catch { /* not JSON: not ours to judge here */ }
        });
        ws.on('framesent', ({ payload }) => {
          try {
            frames[name].push({ at: Date.now(), sent: true, msg: JSON.parse(payload) });
          } catch { /* not JSON: not ours to judge here */ }
        });
      }),
    });
  }
  const ids = {};
  for (const name of PEOPLE) {
    const page = pages[name];
    await page.locator('[data-testid="room-view"]').waitFor({ state: 'visible', timeout: JOIN_MS });
    await eventually(async () => (await page.locator('[data-testid="video-tile"]').count()) === 3, `${name} to show three tiles`, JOIN_MS);
    assert.equal(await page.locator('body').getAttribute('data-media'), 'on', `${name}: the server forwards media`);
    ids[name] = await page.locator('[data-testid="video-tile"][data-self="true"]').getAttribute('data-member-id');
  }
  assert.equal(new Set(Object.values(ids)).size, 3, `three distinct member ids: ${JSON.stringify(ids)}`);
  const byId = Object.fromEntries(Object.entries(ids).map(([name, id]) => [id, name]));
  const othersOf = (name, present = PEOPLE) => present.filter((n) => n !== name).map((n) => ids[n]);
  step('three pages in the room');

  // 2. Everyone receives the other two: video decoded and shown in the right tile, audio playing.
  for (const name of PEOPLE) {
    let problems = [];
    await eventually(async () => {
      problems = mediaProblems(await snapshot(pages[name]), othersOf(name));
      return problems.length === 0;
    }, () => `${name} to show live media from ${othersOf(name).map((id) => byId[id])}: ${problems.join('; ')}`, MEDIA_UP_MS, 250);
    const tiles = (await snapshot(pages[name])).tiles;
    for (const tile of tiles.filter((t) => !t.self)) {
      assert.equal(tile.name, byId[tile.id], `${name}: the tile of ${byId[tile.id]} is labelled with their name`);
    }
  }
  step('media up on every page');
  for (const name of PEOPLE) await mediaKeepsFlowing(pages[name], name, othersOf(name));
  step('media flowing on every page');

  // The picture: ann's room, three tiles of live fake-camera video (her own preview included).
  const ann = pages.ann;
  await eventually(async () => (await snapshot(ann)).tiles.every((t) => t.hasVideo && t.videoWidth > 0), 'all three of ann\'s tiles to show video');
  await ann.screenshot({ path: path.join(SCREENSHOT_DIR, 'room-3-people.png'), timeout: WAIT_MS });

  // 3. bob turns his camera off: ann and cat show his avatar within 3 s of the click, driven by
  // the server's member_updated.
  const bob = pages.bob;
  const cat = pages.cat;
  const bobsTile = (tiles) => tiles.find((t) => t.id === ids.bob);
  const camOffAt = Date.now();
  await bob.locator('[data-testid="camera-toggle"]').click();
  const camOffSeen = await allWithin({ ann, cat }, camOffAt, "to show bob's tile with the camera off", (tiles) => {
    const tile = bobsTile(tiles);
    return tile && tile.videoMuted === 'true' && !tile.hasVideo && tile.avatarShown;
  });
  assert.equal(await bob.locator('[data-testid="camera-toggle"]').getAttribute('aria-pressed'), 'true', "bob's camera button shows the camera as off");
  const camOffMsg = {};
  for (const [name, page] of Object.entries({ ann, cat })) {
    const tiles = await page.evaluate(readTiles);
    assert.equal(bobsTile(tiles).initials, 'B', `${name} shows bob's initials in place of his video`);
    const other = tiles.find((t) => !t.self && t.id !== ids.bob);
    assert.ok(other.hasVideo && other.videoMuted === 'false', `${name} still shows ${byId[other.id]}'s video`);
    const update = frames[name].find(({ at, sent, msg }) => !sent && at >= camOffAt && msg.type === 'member_updated'
      && (msg.member?.id ?? msg.id) === ids.bob && (msg.member?.video_muted ?? msg.video_muted) === true);
    assert.ok(update, `${name} received member_updated with bob's video_muted: true`);
    camOffMsg[name] = update.at - camOffAt;
  }
  const bobSelf = (await bob.evaluate(readTiles)).find((t) => t.self);
  assert.ok(!bobSelf.hasVideo && bobSelf.avatarShown && bobSelf.videoMuted === 'true', `bob's own tile shows his camera off: ${JSON.stringify(bobSelf)}`);
  const muteSent = frames.bob.find(({ at, sent, msg }) => sent && at >= camOffAt && msg.type === 'mute' && msg.kind === 'video' && msg.muted === true);
  assert.ok(muteSent, 'bob sent {"type":"mute","kind":"video","muted":true}');
  await ann.screenshot({ path: path.join(SCREENSHOT_DIR, 'room-camera-off.png'), timeout: WAIT_MS });
  step(`bob's camera off shown after ${JSON.stringify(camOffSeen)} ms (mute sent after ${muteSent.at - camOffAt} ms, member_updated after ${JSON.stringify(camOffMsg)} ms)`);

  // bob turns it back on: his video returns on ann's and cat's pages.
  const camOnAt = Date.now();
  await bob.locator('[data-testid="camera-toggle"]').click();
  const camOnSeen = await allWithin({ ann, cat }, camOnAt, "to show bob's video again", (tiles) => {
    const tile = bobsTile(tiles);
    return tile && tile.videoMuted === 'false' && tile.hasVideo && !tile.avatarShown;
  });
  assert.equal(await bob.locator('[data-testid="camera-toggle"]').getAttribute('aria-pressed'), 'false', "bob's camera button shows the camera as on");
  step(`bob's camera on again after ${JSON.stringify(camOnSeen)} ms`);

  // What ann receives cat's tracks with, to see them reused for the next person (step 5).
  const annSnap = await snapshot(ann);
  const catTile = annSnap.tiles.find((t) => t.id === ids.cat);
  const catSsrcs = {
    video: annSnap.inbound[catTile.videoTrack.id].ssrc,
    audio: annSnap.inbound[catTile.audioTracks[0].id].ssrc,
  };

  // 4. cat leaves: her tile disappears from ann's and bob's pages within 3 s of the click.
  const leftAt = Date.now();
  await cat.locator('[data-testid="leave-button"]').click();
  const leaveSeen = await allWithin({ ann, bob }, leftAt, "to drop cat's tile", (tiles) => tiles.length === 2 && !tiles.some((t) => t.id === ids.cat));
  const leaveSent = frames.cat.find(({ at, sent, msg }) => sent && at >= leftAt && msg.type === 'leave');
  assert.ok(leaveSent, 'cat sent {"type":"leave"}');
  step(`cat's tile gone after ${JSON.stringify(leaveSeen)} ms (leave sent after ${leaveSent.at - leftAt} ms)`);
  await cat.locator('[data-testid="lobby"]').waitFor({ state: 'visible' });
  const catMedia = await cat.evaluate(() => ({
    connections: window.__test.pcs.map((pc) => pc.signalingState),
    localTracks: window.__test.localTracks.map((t) => `${t.kind}:${t.readyState}`),
  }));
  assert.deepEqual(catMedia.connections, ['closed', 'closed'], "cat's publish and subscribe connections are closed after leaving");
  assert.ok(catMedia.localTracks.length >= 2 && catMedia.localTracks.every((t) => t.endsWith(':ended')),
    `cat's camera and microphone are released after leaving: ${catMedia.localTracks}`);

  // The server re-offers without cat's tracks; ann and bob keep receiving each other.
  for (const name of ['ann', 'bob']) {
    let problems = [];
    await eventually(async () => {
      problems = mediaProblems(await snapshot(pages[name]), othersOf(name, ['ann', 'bob']));
      return problems.length === 0;
    }, () => `${name} to receive only ${othersOf(name, ['ann', 'bob']).map((id) => byId[id])} after cat left: ${problems.join('; ')}`, RENEGOTIATE_MS, 250);
    await mediaKeepsFlowing(pages[name], name, othersOf(name, ['ann', 'bob']));
  }
  step('ann and bob still receive each other after the re-offer');

  // 5. dan joins and leaves, then eve joins. The server reuses freed SSRCs (so a member who stays
  // does not pile up per-SSRC state), but never on the transceiver that carried them last: dan's
  // tracks take cat's transceivers with new SSRCs, and eve's take the same transceivers with cat's
  // SSRCs back, continuing their numbering. ann and bob must decode and show both.
  const inboundOf = (snap, id) => {
    const tile = snap.tiles.find((t) => t.id === id);
    return { video: snap.inbound[tile.videoTrack.id].ssrc, audio: snap.inbound[tile.audioTracks[0].id].ssrc };
  };
  const arrives = async (name) => {
    pages[name] = await openPerson(env.browser, name, `${env.server.url}/?room=${ROOM}&name=${name}`, { pageErrors, initScript: spy });
    await pages[name].locator('[data-testid="room-view"]').waitFor({ state: 'visible', timeout: JOIN_MS });
    await eventually(async () => (await pages[name].locator('[data-testid="video-tile"]').count()) === 3, `${name} to show three tiles`, JOIN_MS);
    ids[name] = await pages[name].locator('[data-testid="video-tile"][data-self="true"]').getAttribute('data-member-id');
    byId[ids[name]] = name;
    const present = ['ann', 'bob', name];
    for (const who of present) {
      let problems = [];
      await eventually(async () => {
        problems = mediaProblems(await snapshot(pages[who]), othersOf(who, present));
        return problems.length === 0;
      }, () => `${who} to show live media from ${othersOf(who, present).map((id) => byId[id])}: ${problems.join('; ')}`, MEDIA_UP_MS, 250);
      await mediaKeepsFlowing(pages[who], who, othersOf(who, present));
    }
    return inboundOf(await snapshot(ann), ids[name]);
  };
  const danSsrcs = await arrives('dan');
  assert.notEqual(danSsrcs.video, catSsrcs.video, "dan's video is not on the SSRC cat's transceiver carried last");
  step(`dan seen and heard by ann and bob (SSRCs ${JSON.stringify(danSsrcs)}, cat had ${JSON.stringify(catSsrcs)})`);
  await pages.dan.locator('[data-testid="leave-button"]').click();
  await allWithin({ ann, bob }, Date.now(), "to drop dan's tile", (tiles) => tiles.length === 2 && !tiles.some((t) => t.id === ids.dan));
  for (const name of ['ann', 'bob']) {
    let problems = [];
    await eventually(async () => {
      problems = mediaProblems(await snapshot(pages[name]), othersOf(name, ['ann', 'bob']));
      return problems.length === 0;
    }, () => `${name} to receive only ${othersOf(name, ['ann', 'bob']).map((id) => byId[id])} after dan left: ${problems.join('; ')}`, RENEGOTIATE_MS, 250);
  }
  const eveSsrcs = await arrives('eve');
  assert.deepEqual(eveSsrcs, catSsrcs, "ann receives eve's tracks on the SSRCs cat's came on");
  step(`eve seen and heard by ann and bob on cat's SSRCs ${JSON.stringify(eveSsrcs)}`);
  await eventually(async () => (await snapshot(ann)).tiles.every((t) => t.hasVideo && t.videoWidth > 0), "all three of ann's tiles to show video after eve joined");
  await ann.screenshot({ path: path.join(SCREENSHOT_DIR, 'room-after-churn.png'), timeout: WAIT_MS });

  for (const name of [...PEOPLE, 'dan', 'eve']) {
    const { errorToasts } = await snapshot(pages[name]);
    assert.deepEqual(errorToasts, [], `${name} saw no error toasts`);
  }
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
}
