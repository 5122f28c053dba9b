// Yoom web client entry point: owns the UI state (lobby → joining → room), wires the signaling
// client, the chat panel, the video grid and, when the server supports it, the media session.
//
// Vocabulary (same as the server and docs/protocol.md): room, member, publisher, subscriber, track.
// Invariants:
// - Chat and the member list never depend on media: a media failure is shown and contained.
// - While in a room the URL is `?room=NAME` (plus `relay=1` when given), so a reload or a copied
//   address bar lands in the same room; the lobby clears it.

import { Signaling } from './signaling.js';
import { MediaSession, describeTurnError } from './media.js';
import { VideoGrid } from './grid.js';
import { ChatPanel } from './chat.js';
import { el, icon, setIcon, hydrateIcons, toast, initials, avatarColor, hhmm } from './ui.js';

const NAME_KEY = 'yoom.nickname';
const NAME_MAX_CHARS = 32;
const ROOM_MAX_CHARS = 64;
const CLOCK_TICK_MS = 10_000;
const QUIET_JOINS_AFTER_REJOIN_MS = 15_000;
const narrowScreen = window.matchMedia('(max-width: 760px)');

const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(window.location.search);
// `?relay=1`: iceTransportPolicy 'relay', media only through the TURN servers the server hands out
// in `joined` (for checking a TURN deployment, and how the browser tests prove relaying works).
const relayOnly = params.get('relay') === '1';
// `?token=…`: the join token a server with `auth.mode = "token"` requires (from `yoom token` or
// the host's own service); sent with every join of this page.
const joinToken = params.get('token') || null;
const withToken = (msg) => (joinToken ? { ...msg, token: joinToken } : msg);

const state = {
  view: 'boot', // 'lobby' | 'joining' | 'room'
  room: null,
  selfId: null,
  joinName: '', // the name we asked for (re-used when re-joining after a reconnection)
  members: new Map(), // member id → MEMBER, self included
  mediaEnabled: false,
  media: null,
  panelOpen: !narrowScreen.matches,
  panelSection: 'chat', // which part of the side panel the last toggle asked for
  unread: 0,
  pendingJoin: null, // { room, name } waiting for the connection
  joinSeq: 0, // bumps on every join/leave so a late reply for an abandoned join is ignored
  stageNotice: null,
  mediaProblems: { states: {}, turn: new Map(), dismissed: null }, // see renderMediaProblems
  quietJoinNames: new Set(), // names present before our reconnection…
  quietJoinsUntil: 0, // …whose re-joins until this time are not announced in chat
};

// ---- helpers ----------------------------------------------------------------------------------

const charCount = (s) => Array.from(s).length;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/u;

/** Returns an error sentence, or null when `value` is a valid name/room. */
function invalidReason(value, what, max) {
  const v = value.trim();
  if (!v) return `Enter a ${what}.`;
  if (charCount(v) > max) return `The ${what} can be at most ${max} characters.`;
  if (CONTROL_CHARS.test(v)) return `The ${what} cannot contain control characters.`;
  return null;
}

function loadName() {
  try {
    return localStorage.getItem(NAME_KEY) ?? '';
  } catch {
    return '';
  }
}

function saveName(name) {
  try {
    if (name) localStorage.setItem(NAME_KEY, name);
  } catch { /* storage disabled: the name just is not remembered */ }
}

function setUrl(room) {
  const url = new URL(window.location.href);
  url.search = '';
  if (room) url.searchParams.set('room', room);
  if (relayOnly) url.searchParams.set('relay', '1');
  window.history.replaceState(null, '', url);
}

function inviteLink() {
  const url = new URL(window.location.href);
  url.search = '';
  url.hash = '';
  url.searchParams.set('room', state.room);
  return url.toString();
}

function errorText(err) {
  return err?.message || err?.code || String(err);
}

// ---- views ------------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  $('lobby').hidden = view !== 'lobby';
  $('joining').hidden = view !== 'joining';
  $('room').hidden = view !== 'room';
  document.body.dataset.view = view;
  document.title = view === 'room' && state.room ? `${state.room} · Yoom` : 'Yoom';
  if (view === 'room') grid.layout();
}

function showLobby({ prefillRoom = '' } = {}) {
  showView('lobby');
  if (prefillRoom) $('room-input').value = prefillRoom;
  if (sig.isOpen) sig.request({ type: 'list_rooms' }).then((m) => renderRooms(m.rooms)).catch(() => {});
}

// ---- connection state -------------------------------------------------------------------------

let countdownTimer = null;

function renderConnection({ state: conn, retryAt }) {
  const banner = $('conn-banner');
  const lobbyPill = $('lobby-conn');
  const roomPill = $('room-conn');
  clearInterval(countdownTimer);
  lobbyPill.dataset.state = conn;
  roomPill.dataset.state = conn;
  document.body.dataset.connection = conn;
  if (conn === 'open') {
    banner.hidden = true;
    lobbyPill.textContent = 'Connected';
    roomPill.hidden = true;
    return;
  }
  if (conn === 'connecting') {
    lobbyPill.textContent = 'Connecting…';
    return;
  }
  if (conn === 'reconnecting') {
    lobbyPill.textContent = 'Reconnecting…';
    roomPill.hidden = false;
    roomPill.textContent = 'Reconnecting…';
    banner.hidden = false;
    const lead = sig.everOpened ? 'Connection lost.' : 'Cannot reach the Yoom server.';
    const tick = () => {
      const secs = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
      $('conn-text').textContent = secs > 0 ? `${lead} Reconnecting in ${secs} s…` : `${lead} Reconnecting…`;
    };
    tick();
    countdownTimer = setInterval(tick, 1000);
  }
}

// ---- lobby ------------------------------------------------------------------------------------

function renderRooms(rooms) {
  if (!Array.isArray(rooms)) return;
  const list = $('room-list');
  list.replaceChildren(...rooms.map(({ room, count }) => el('li', {},
    el('button', {
      class: 'room-item',
      type: 'button',
      'data-testid': 'room-item',
      'data-room': room,
      'aria-label': `Join ${room}, ${count} ${count === 1 ? 'person' : 'people'} inside`,
      onclick: () => joinFromLobby(room),
    },
    el('span', { class: 'room-avatar', style: `background:${avatarColor(room)}`, 'aria-hidden': 'true' }, initials(room)),
    el('span', { class: 'room-info' },
      el('span', { class: 'room-title', 'data-testid': 'room-item-name' }, room),
      el('span', { class: 'room-sub' }, 'Live now · click to join')),
    el('span', { class: 'room-count', title: `${count} ${count === 1 ? 'person' : 'people'}` },
      icon('users', { size: 15 }), el('span', { 'data-testid': 'room-count' }, String(count))),
    icon('arrowRight', { size: 18, className: 'room-go' })))));
  $('rooms-empty').hidden = rooms.length > 0;
  list.hidden = rooms.length === 0;
}

function formError(text, focusId) {
  $('form-error').textContent = text ?? '';
  if (focusId) $(focusId).focus();
}

function joinFromLobby(room) {
  const name = $('nickname').value.trim();
  const nameProblem = invalidReason(name, 'name', NAME_MAX_CHARS);
  if (nameProblem) {
    formError(nameProblem === 'Enter a name.' ? 'Enter your name first, so others know who joined.' : nameProblem, 'nickname');
    return;
  }
  const roomProblem = invalidReason(room, 'room name', ROOM_MAX_CHARS);
  if (roomProblem) {
    formError(roomProblem, 'room-input');
    return;
  }
  formError('');
  joinRoom(room.trim(), name);
}

// ---- joining ----------------------------------------------------------------------------------

async function joinRoom(room, name) {
  const seq = ++state.joinSeq;
  saveName(name);
  $('joining-text').textContent = `Joining “${room}”…`;
  showView('joining');
  if (!sig.isOpen) {
    state.pendingJoin = { room, name }; // runs on the next `hello`
    return;
  }
  state.pendingJoin = null;
  try {
    const joined = await sig.request(withToken({ type: 'join', room, ...(name ? { name } : {}) }));
    if (seq !== state.joinSeq) {
      // The user gave up meanwhile; do not stay in a room nobody is looking at.
      sig.request({ type: 'leave' }).catch(() => {});
      return;
    }
    enterRoom(joined, name);
  } catch (err) {
    if (seq !== state.joinSeq) return;
    if (err.code === 'disconnected') {
      state.pendingJoin = { room, name };
      return;
    }
    const reason = err.code === 'room_full' ? 'the room is full'
      : err.code === 'unauthorized' ? `this server needs a valid invitation link (${errorText(err)})`
        : errorText(err);
    toast(`Could not join “${room}”: ${reason}`, 'error');
    setUrl(null);
    showLobby({ prefillRoom: room });
  }
}

function cancelJoin() {
  state.joinSeq++;
  state.pendingJoin = null;
  setUrl(null);
  showLobby();
}

function enterRoom(joined, name, { rejoin = false, reuse = null } = {}) {
  state.room = joined.room;
  state.selfId = joined.self?.id ?? sig.memberId;
  state.joinName = name;
  sig.setSession({ room: joined.room, name, token: joinToken });
  state.members = new Map();
  const self = { audio_muted: false, video_muted: false, ...joined.self, id: state.selfId };
  state.members.set(self.id, self);
  for (const m of joined.members ?? []) if (m.id !== self.id) state.members.set(m.id, m);

  grid.clear();
  grid.upsertMember(self, { self: true });
  for (const m of state.members.values()) if (m.id !== self.id) grid.upsertMember(m);
  if (!rejoin) {
    chat.clear();
    setUnread(0);
    chat.addSystem(`You joined “${joined.room}”`);
  }
  renderMembers();
  $('room-name').textContent = joined.room;
  $('room-name').title = joined.room;
  $('controls-room').textContent = joined.room;
  setUrl(joined.room);
  showView('room');
  applyPanel();

  state.mediaEnabled = joined.media === true && MediaSession.supported();
  document.body.dataset.media = state.mediaEnabled ? 'on' : 'off'; // lets tests tell the modes apart
  startMedia(joined.ice_servers ?? [], reuse);
  refreshControls();
}

// ---- media ------------------------------------------------------------------------------------

function setStageNotice(text) {
  state.stageNotice = text;
  const node = $('stage-notice');
  node.hidden = !text;
  if (!text) return;
  node.replaceChildren(icon('info', { size: 16 }), el('span', {}, text),
    el('button', { class: 'notice-close', type: 'button', 'aria-label': 'Dismiss notice', onclick: () => setStageNotice(null) }, icon('close', { size: 14 })));
}

// A failed connection or a TURN server refusing us does not fix itself, so these show as a lasting
// banner rather than a toast. A TURN error shows at once in relay-only mode (no relay, no media);
// otherwise only as the likely cause once a connection failed, since media usually connects
// directly anyway. A problem disappears once the connection it concerns is connected.

function resetMediaProblems() {
  state.mediaProblems = { states: {}, turn: new Map(), dismissed: null };
  renderMediaProblems();
}

function onMediaConnectionState(role, connState) {
  state.mediaProblems.states[role] = connState;
  renderMediaProblems();
}

function onTurnError(problem) {
  const { title, detail } = describeTurnError(problem);
  const known = state.mediaProblems.turn.get(title); // the same refusal for both connections: one line
  if (known) known.roles.add(problem.role);
  else state.mediaProblems.turn.set(title, { title, detail, code: problem.code, roles: new Set([problem.role]) });
  renderMediaProblems();
}

function renderMediaProblems() {
  const { states, turn, dismissed } = state.mediaProblems;
  const failed = Object.keys(states).filter((role) => states[role] === 'failed');
  const lines = [];
  if (failed.length) {
    const who = failed.length > 1 ? 'Audio and video cannot get through'
      : failed[0] === 'publish' ? 'The others cannot see or hear you' : 'You cannot see or hear the others';
    lines.push(el('p', { 'data-testid': 'media-failed' }, el('strong', {}, 'Media connection failed.'), ` ${who}; chat still works.`));
  }
  if (relayOnly || failed.length) {
    for (const t of turn.values()) {
      if ([...t.roles].every((role) => states[role] === 'connected')) continue;
      lines.push(el('p', { 'data-testid': 'turn-error', 'data-code': String(t.code) }, el('strong', {}, t.title), ` ${t.detail}`));
    }
  }
  const node = $('media-error');
  const signature = lines.map((l) => l.textContent).join('\n');
  node.hidden = lines.length === 0 || signature === dismissed;
  if (node.hidden) return;
  if (node.dataset.signature === signature) return; // unchanged: keep the DOM (and any focus) as is
  node.dataset.signature = signature;
  node.replaceChildren(icon('alert', { size: 18 }), el('div', { class: 'media-error-text' }, lines),
    el('button', {
      class: 'notice-close',
      type: 'button',
      'aria-label': 'Dismiss',
      onclick: () => {
        state.mediaProblems.dismissed = signature;
        renderMediaProblems();
      },
    }, icon('close', { size: 14 })));
}

function startMedia(iceServers, reuse) {
  setStageNotice(null);
  resetMediaProblems();
  if (!state.mediaEnabled) {
    if (!MediaSession.supported()) setStageNotice('This browser cannot do video calls (no WebRTC). Chat still works.');
    return;
  }
  const media = new MediaSession({
    signaling: sig,
    localStream: reuse?.localStream,
    muted: reuse?.muted,
    devices: reuse?.devices,
    onRemoteTrack: (memberId, track) => grid.addTrack(memberId, track),
    onRemoteTrackRemoved: (memberId, track) => grid.removeTrack(memberId, track),
    onLocalStream: (stream) => {
      grid.setLocalStream(stream);
      refreshControls();
    },
    onError: (text) => toast(text, 'error'),
    onNotice: (text) => setStageNotice(text),
    onConnectionState: (role, connState) => {
      if (state.media === media) onMediaConnectionState(role, connState);
    },
    onTurnError: (problem) => {
      if (state.media === media) onTurnError(problem);
    },
  });
  state.media = media;
  const hasTurn = iceServers.some((s) => [].concat(s.urls ?? []).some((u) => /^turns?:/i.test(u)));
  if (relayOnly && !hasTurn) setStageNotice('Relay-only mode (relay=1) was requested, but this server offers no TURN relay, so media cannot connect.');
  media.start({ iceServers, relay: relayOnly })
    .then(() => {
      if (state.media !== media) return;
      refreshControls();
      syncSelfMute();
    })
    .catch((err) => toast(`Media could not start: ${errorText(err)}`, 'error'));
}

function stopMedia({ keepLocal = false } = {}) {
  const media = state.media;
  state.media = null;
  media?.stop({ keepLocal });
  return media;
}

/** Reflects our own mute state in the member list and tile right away (the server confirms). */
function syncSelfMute() {
  const self = state.members.get(state.selfId);
  if (!self || !state.media) return;
  self.audio_muted = state.media.muted.audio;
  self.video_muted = state.media.muted.video;
  grid.upsertMember(self, { self: true });
  renderMembers();
}

async function toggleMute(kind) {
  const media = state.media;
  if (!media) return;
  const muted = !media.muted[kind];
  try {
    await media.setMuted(kind, muted);
  } catch (err) {
    toast(errorText(err), 'error');
    refreshControls();
    return;
  }
  refreshControls();
  syncSelfMute();
  sig.request({ type: 'mute', kind, muted })
    .catch((err) => toast(`Could not tell the room about your ${kind === 'audio' ? 'microphone' : 'camera'}: ${errorText(err)}`, 'error'));
}

function refreshControls() {
  const media = state.media;
  const available = !!media;
  const why = 'Audio and video are not available on this server';
  for (const [kind, id, on, off, what] of [
    ['audio', 'btn-mic', 'mic', 'micOff', 'microphone'],
    ['video', 'btn-cam', 'video', 'videoOff', 'camera'],
  ]) {
    const button = $(id);
    const muted = available ? media.muted[kind] : true;
    button.disabled = !available;
    button.classList.toggle('off', available && muted);
    button.setAttribute('aria-pressed', String(available && muted));
    button.setAttribute('aria-label', available ? `Turn ${muted ? 'on' : 'off'} ${what}` : `${what[0].toUpperCase()}${what.slice(1)} unavailable`);
    button.title = available ? `Turn ${muted ? 'on' : 'off'} ${what} (Ctrl+${kind === 'audio' ? 'D' : 'E'})` : why;
    setIcon(button, muted ? off : on);
  }
  $('btn-devices').disabled = !available;
  $('btn-devices').title = available ? 'Choose camera and microphone' : why;
  grid.setLocalVideoOn(available && !media.muted.video && media.hasLocal('video'));
}

async function openDevices() {
  const media = state.media;
  const dialog = $('device-dialog');
  const cam = $('select-camera');
  const mic = $('select-mic');
  const note = $('device-note');
  note.textContent = '';
  let devices = { audio: [], video: [] };
  try {
    devices = media ? await media.listDevices() : devices;
  } catch (err) {
    note.textContent = `Cannot list devices: ${errorText(err)}`;
  }
  const fill = (select, list, kind, noun) => {
    const current = media?.devices[kind] ?? '';
    select.replaceChildren(...(list.length
      ? list.map((d, i) => el('option', { value: d.deviceId, selected: d.deviceId === current }, d.label || `${noun} ${i + 1}`))
      : [el('option', { value: '' }, `No ${noun.toLowerCase()} found`)]));
    select.disabled = !media || list.length === 0;
  };
  fill(cam, devices.video, 'video', 'Camera');
  fill(mic, devices.audio, 'audio', 'Microphone');
  if (!media) note.textContent = 'Audio and video are not available on this server.';
  if (typeof dialog.showModal === 'function') dialog.showModal();
  else dialog.setAttribute('open', '');
}

async function chooseDevice(kind, deviceId) {
  const media = state.media;
  if (!media || !deviceId) return;
  try {
    await media.useDevice(kind, deviceId);
    refreshControls();
  } catch (err) {
    toast(errorText(err), 'error');
  }
}

// ---- room events ------------------------------------------------------------------------------

function sortedMembers() {
  return [...state.members.values()].sort((a, b) => {
    if (a.id === state.selfId) return -1;
    if (b.id === state.selfId) return 1;
    return String(a.name).localeCompare(String(b.name), undefined, { sensitivity: 'base' });
  });
}

function renderMembers() {
  const items = sortedMembers().map((m) => {
    const self = m.id === state.selfId;
    return el('li', { class: `member${self ? ' self' : ''}`, 'data-testid': 'member-item', 'data-member-id': m.id },
      el('span', { class: 'member-avatar', style: `background:${avatarColor(m.name)}`, 'aria-hidden': 'true' }, initials(m.name)),
      el('span', { class: 'member-name' },
        el('span', { 'data-testid': 'member-name' }, m.name),
        self ? el('span', { class: 'you' }, ' (you)') : null),
      el('span', { class: 'member-icons' },
        m.audio_muted ? icon('micOff', { size: 16, label: 'Microphone muted' }) : null,
        m.video_muted ? icon('videoOff', { size: 16, label: 'Camera off' }) : null));
  });
  $('member-list').replaceChildren(...items);
  $('member-count').textContent = String(state.members.size);
  $('people-badge').textContent = String(state.members.size);
  $('btn-people').setAttribute('aria-label', `Show people (${state.members.size})`);
}

function onMemberJoined(msg) {
  const m = msg.member;
  if (state.view !== 'room' || !m?.id || m.id === state.selfId) return;
  const isNew = !state.members.has(m.id);
  state.members.set(m.id, { audio_muted: false, video_muted: false, ...m });
  grid.upsertMember(state.members.get(m.id));
  renderMembers();
  // After our own reconnection the others re-appear with new ids; do not announce them as new.
  const returning = Date.now() < state.quietJoinsUntil && state.quietJoinNames.has(m.name);
  if (isNew && !returning) chat.addSystem(`${m.name} joined`);
}

function onMemberLeft(msg) {
  const id = msg.id ?? msg.member?.id;
  if (state.view !== 'room' || !id) return;
  const m = state.members.get(id);
  state.members.delete(id);
  grid.removeMember(id);
  renderMembers();
  if (m) chat.addSystem(`${m.name} left`);
}

function onMemberUpdated(msg) {
  const update = msg.member ?? msg;
  if (state.view !== 'room' || !update?.id) return;
  const existing = state.members.get(update.id);
  if (!existing) return;
  const self = update.id === state.selfId;
  if (update.name && update.name !== existing.name) chat.addSystem(`${existing.name} is now ${update.name}`);
  const merged = { ...existing, ...update };
  if (self && state.media) {
    // Our own devices are the truth for our tile; the echo may be older than a quick double click.
    merged.audio_muted = state.media.muted.audio;
    merged.video_muted = state.media.muted.video;
  }
  state.members.set(update.id, merged);
  grid.upsertMember(merged, { self });
  renderMembers();
}

function onChat(msg) {
  if (state.view !== 'room') return;
  chat.addMessage(msg, msg.from?.id === state.selfId);
}

function setUnread(n) {
  state.unread = n;
  const badge = $('chat-badge');
  badge.hidden = n === 0;
  badge.textContent = n > 99 ? '99+' : String(n);
  $('btn-chat').setAttribute('aria-label', n ? `Show chat (${n} unread)` : 'Show chat');
}

function leaveRoom() {
  state.joinSeq++;
  sig.setSession(null);
  stopMedia();
  if (sig.isOpen) sig.request({ type: 'leave' }).catch((err) => console.warn('yoom: leave failed', err));
  state.room = null;
  state.selfId = null;
  state.members.clear();
  grid.clear();
  chat.clear();
  setUnread(0);
  setStageNotice(null);
  resetMediaProblems();
  $('sound-unlock').hidden = true;
  setUrl(null);
  showLobby();
}

function onRejoined(joined) {
  if (state.view !== 'room') return;
  const old = stopMedia({ keepLocal: true });
  state.quietJoinNames = new Set([...state.members.values()].map((m) => m.name));
  state.quietJoinsUntil = Date.now() + QUIET_JOINS_AFTER_REJOIN_MS;
  const reuse = old ? { localStream: old.localStream, muted: { ...old.muted }, devices: { ...old.devices } } : null;
  enterRoom(joined, state.joinName, { rejoin: true, reuse });
  chat.addSystem('Reconnected', 'ok');
  toast('Reconnected', 'success');
}

function onRejoinFailed(err) {
  if (state.view !== 'room') return;
  const room = state.room;
  toast(`Could not re-join “${room}” after reconnecting: ${errorText(err)}`, 'error');
  leaveRoom();
  $('room-input').value = room;
}

// ---- side panel -------------------------------------------------------------------------------

function applyPanel() {
  const panel = $('side-panel');
  panel.classList.toggle('open', state.panelOpen);
  document.body.classList.toggle('panel-open', state.panelOpen);
  $('btn-chat').setAttribute('aria-expanded', String(state.panelOpen));
  $('btn-chat').classList.toggle('active', state.panelOpen);
  $('btn-people').classList.toggle('active', state.panelOpen);
  if (state.panelOpen) setUnread(0);
  requestAnimationFrame(() => grid.layout());
}

function togglePanel(section) {
  const open = !(state.panelOpen && (state.panelSection === section || !narrowScreen.matches));
  state.panelOpen = open;
  state.panelSection = section;
  applyPanel();
  if (!open) return;
  if (section === 'chat') {
    chat.scrollToBottom();
    if (!narrowScreen.matches || document.activeElement?.id === 'btn-chat') chat.focus();
  } else {
    $('member-list').scrollIntoView({ block: 'nearest' });
  }
}

// ---- clipboard --------------------------------------------------------------------------------

async function copyInvite() {
  const link = inviteLink();
  let copied = false;
  try {
    if (navigator.clipboard?.writeText) {
      await navigator.clipboard.writeText(link);
      copied = true;
    }
  } catch { /* falls back below (insecure context or denied) */ }
  if (!copied) {
    const scratch = el('textarea', { class: 'visually-hidden', readonly: true });
    scratch.value = link;
    document.body.append(scratch);
    scratch.select();
    try {
      copied = document.execCommand('copy');
    } catch {
      copied = false;
    }
    scratch.remove();
  }
  if (copied) toast('Invite link copied — share it to bring people in.', 'success');
  else toast(`Copy this invite link: ${link}`, 'info', { timeout: 15000 });
}

// ---- wiring -----------------------------------------------------------------------------------

hydrateIcons();
const sig = new Signaling(Signaling.defaultUrl());
const grid = new VideoGrid($('grid'), { onAudioBlocked: () => { $('sound-unlock').hidden = false; } });
const chat = new ChatPanel({
  list: $('chat-list'),
  input: $('chat-input'),
  send: $('chat-send'),
  counter: $('chat-counter'),
  newPill: $('chat-new'),
  empty: $('chat-empty'),
  onSend: async (text) => {
    try {
      const reply = await sig.request({ type: 'chat', text });
      // The sender's own copy of the `chat` may come back as the direct reply (carrying our ref)
      // rather than as an `ack` followed by the broadcast; show it either way.
      if (reply.type === 'chat') onChat(reply);
    } catch (err) {
      toast(`Message not sent: ${errorText(err)}`, 'error');
      throw err;
    }
  },
  onIncoming: () => {
    if (!state.panelOpen) setUnread(state.unread + 1);
  },
});

sig.on('state', renderConnection);
sig.on('hello', () => {
  if (state.pendingJoin) {
    const { room, name } = state.pendingJoin;
    joinRoom(room, name);
  } else if (state.view === 'lobby') {
    sig.request({ type: 'list_rooms' }).then((m) => renderRooms(m.rooms)).catch(() => {});
  }
});
sig.on('rooms', (msg) => renderRooms(msg.rooms));
sig.on('member_joined', onMemberJoined);
sig.on('member_left', onMemberLeft);
sig.on('member_updated', onMemberUpdated);
sig.on('chat', onChat);
sig.on('rejoined', onRejoined);
sig.on('rejoin_failed', onRejoinFailed);
sig.on('error', (msg) => {
  // `kicked` is followed by the socket closing (code 4001); the `kicked` event says it once.
  if (msg.code === 'kicked') return;
  toast(msg.message || msg.code || 'The server reported an error', 'error');
});
sig.on('kicked', () => {
  if (state.view === 'room' || state.view === 'joining') leaveRoom();
  $('lobby-conn').textContent = 'Disconnected';
  toast('An administrator removed you from the room. Reload the page to come back.', 'error');
  document.body.dataset.kicked = 'true';
});
sig.on('left', (msg) => {
  if (state.view !== 'room' || msg.room !== state.room) return;
  const why = msg.reason === 'room_closed' ? 'An administrator closed the room.'
    : msg.reason === 'media_failed' ? 'Your media connection failed, so you left the room.'
      : 'You left the room.';
  state.room = null; // the server has taken us out already: no `leave` to send
  leaveRoom();
  toast(why, 'error');
});

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  joinFromLobby($('room-input').value);
});
$('nickname').addEventListener('input', () => {
  const name = $('nickname').value.trim();
  if (!invalidReason(name, 'name', NAME_MAX_CHARS)) saveName(name);
  formError('');
});
$('room-input').addEventListener('input', () => formError(''));
$('joining-cancel').addEventListener('click', cancelJoin);
$('conn-retry').addEventListener('click', () => sig.retryNow());
$('btn-leave').addEventListener('click', leaveRoom);
$('btn-mic').addEventListener('click', () => toggleMute('audio'));
$('btn-cam').addEventListener('click', () => toggleMute('video'));
$('btn-devices').addEventListener('click', openDevices);
$('btn-chat').addEventListener('click', () => togglePanel('chat'));
$('btn-people').addEventListener('click', () => togglePanel('people'));
$('panel-close').addEventListener('click', () => {
  state.panelOpen = false;
  applyPanel();
});
$('copy-link').addEventListener('click', copyInvite);
$('select-camera').addEventListener('change', (e) => chooseDevice('video', e.target.value));
$('select-mic').addEventListener('change', (e) => chooseDevice('audio', e.target.value));
$('sound-unlock').addEventListener('click', () => {
  grid.unlockAudio();
  $('sound-unlock').hidden = true;
});
// Any interaction lets blocked audio and the level meters start.
document.addEventListener('pointerdown', () => grid.unlockAudio(), { passive: true });
document.addEventListener('keydown', (e) => {
  if (state.view !== 'room' || !(e.ctrlKey || e.metaKey) || e.altKey || e.shiftKey) return;
  const key = e.key.toLowerCase();
  if (key === 'd' || key === 'e') {
    e.preventDefault();
    toggleMute(key === 'd' ? 'audio' : 'video');
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.view === 'room' && narrowScreen.matches && state.panelOpen) {
    state.panelOpen = false;
    applyPanel();
  }
});
narrowScreen.addEventListener('change', () => {
  state.panelOpen = !narrowScreen.matches;
  applyPanel();
});
const tickClock = () => { $('clock').textContent = hhmm(Date.now()); };
tickClock();
setInterval(tickClock, CLOCK_TICK_MS);

// ---- start ------------------------------------------------------------------------------------

const urlRoom = (params.get('room') ?? '').trim();
const urlName = (params.get('name') ?? '').trim();
const startName = urlName || loadName();
$('nickname').value = startName;
sig.connect();
if (urlRoom && !invalidReason(urlRoom, 'room name', ROOM_MAX_CHARS) && !invalidReason(startName, 'name', NAME_MAX_CHARS)) {
  joinRoom(urlRoom, startName); // the shareable link skips the lobby
} else {
  showLobby({ prefillRoom: urlRoom });
  if (urlRoom) {
    formError(`Enter your name to join “${urlRoom}”.`);
    $('nickname').focus();
  }
  if (urlName || urlRoom) setUrl(null);
}
