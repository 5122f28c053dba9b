// The /admin page: rooms, members and their tracks from the admin API (docs/api.md), refreshed
// every 2 s, with kick, server-side mute and close-room buttons.
//
// Invariants:
// - The token lives only in this tab's sessionStorage and only travels in the Authorization
//   header. A 401 forgets it and asks again, saying why.
// - Server data reaches the DOM only as text (textContent / attributes), never as HTML.
// - Room and member nodes are kept across refreshes (keyed by room name and member id) and
//   updated in place, so a button does not vanish under the pointer every 2 s.
// - One refresh at a time; a request made meanwhile (after an action) runs right after it.

import { el, icon, initials, avatarColor } from './ui.js';

const TOKEN_KEY = 'yoom.adminToken';
const REFRESH_MS = 2_000;
const ACTION_NOTICE_MS = 10_000; // an action's error stays this long unless dismissed

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat('en');

const state = {
  token: null,
  generation: 0, // bumps on sign-in/out so replies for an older token are ignored
  refreshing: false,
  refreshAgain: false,
  timer: null,
  rooms: new Map(), // room name → RoomView
  serverMutes: new Map(), // `${member id}/${kind}` → muted, from our own mute replies
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- token ------------------------------------------------------------------------------------

function loadToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: ask every time the page loads
  }
}

function saveToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts until the page is left */ }
}

function signIn(token) {
  state.token = token;
  state.generation++;
  state.refreshing = false; // a refresh still in flight belongs to the old generation
  state.refreshAgain = false;
  saveToken(token);
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('sign-out').hidden = false;
  setStatus('loading', 'Loading…');
  refreshNow();
}

/** Forgets the token and shows the prompt with `message` (empty for a plain sign-in). */
function signOut(message = '') {
  state.token = null;
  state.generation++;
  state.refreshing = false;
  state.refreshAgain = false;
  clearTimeout(state.timer);
  saveToken(null);
  clearRooms();
  clearNotices();
  $('dashboard').hidden = true;
  $('sign-out').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('token').value = '';
  $('token').focus();
  setStatus('idle', 'Signed out');
}

// ---- API --------------------------------------------------------------------------------------

/** One admin API call. A 401 signs out (whoever called gets an ApiError too). */
async function api(method, path, body) {
  const generation = state.generation;
  const headers = { Authorization: `Bearer ${state.token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  let data = null;
  const text = await res.text().catch(() => '');
  if (text) {
    try {
      data = JSON.parse(text);
    } catch { /* not JSON: described by the status below */ }
  }
  if (res.status === 401) {
    if (generation === state.generation) {
      signOut('The server did not accept this token (401 Unauthorized). Check the admin token and enter it again.');
    }
    throw new ApiError(401, 'unauthorized');
  }
  if (!res.ok) {
    const reason = typeof data?.error === 'string' ? data.error : res.statusText || 'error';
    throw new ApiError(res.status, `${reason} (${res.status})`);
  }
  return data;
}

const roomPath = (room) => `/api/rooms/${encodeURIComponent(room)}`;
const memberPath = (room, id) => `${roomPath(room)}/members/${encodeURIComponent(id)}`;

// ---- refresh loop -----------------------------------------------------------------------------

function refreshNow() {
  clearTimeout(state.timer);
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  refresh();
}

async function refresh() {
  const generation = state.generation;
  state.refreshing = true;
  state.refreshAgain = false;
  try {
    const list = await api('GET', '/api/rooms');
    const rooms = Array.isArray(list?.rooms) ? list.rooms : [];
    // A room may empty between the two calls: its 404 just drops it from this refresh.
    const details = await Promise.all(rooms.map((r) => api('GET', roomPath(r.room)).catch((err) => {
      if (err.status === 404) return null;
      throw err;
    })));
    if (generation !== state.generation) return;
    render(rooms, details);
    $('rooms').classList.remove('stale');
    dropNotice('poll');
    setStatus('ok', `Live · updated ${clock(new Date())}`);
  } catch (err) {
    if (generation !== state.generation || err.status === 401) return;
    const what = err.status === 404
      ? 'The admin API is not enabled on this server (404).'
      : `Could not load rooms: ${err.message}. Retrying every ${REFRESH_MS / 1000} s.`;
    showNotice(what, { key: 'poll' });
    $('rooms').classList.add('stale'); // what is shown may be out of date
    setStatus('error', 'Not updating');
  } finally {
    if (generation === state.generation) {
      state.refreshing = false;
      if (state.refreshAgain) refresh();
      else state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

// ---- rendering --------------------------------------------------------------------------------

function render(rooms, details) {
  const seen = new Set();
  let previous = null;
  let memberTotal = 0;
  let trackTotal = 0;
  rooms.forEach((summary, i) => {
    const detail = details[i];
    if (!detail || typeof summary?.room !== 'string') return;
    const members = Array.isArray(detail.members) ? detail.members : [];
    if (members.length === 0) return;
    seen.add(summary.room);
    let view = state.rooms.get(summary.room);
    if (!view) {
      view = new RoomView(summary.room);
      state.rooms.set(summary.room, view);
    }
    view.update(members);
    // Keep the server's order (by name) without moving nodes that are already in place.
    const container = $('rooms');
    const wanted = previous ? previous.node.nextSibling : container.firstChild;
    if (wanted !== view.node) container.insertBefore(view.node, wanted);
    previous = view;
    memberTotal += members.length;
    trackTotal += members.reduce((n, m) => n + (Array.isArray(m.tracks) ? m.tracks.length : 0), 0);
  });
  for (const [name, view] of state.rooms) {
    if (!seen.has(name)) {
      view.node.remove();
      state.rooms.delete(name);
    }
  }
  $('rooms-empty').hidden = state.rooms.size > 0;
  $('summary').textContent = `${plural(state.rooms.size, 'room')} · ${plural(memberTotal, 'member')} · ${plural(trackTotal, 'track')}`;
  document.title = state.rooms.size ? `Yoom admin (${state.rooms.size})` : 'Yoom admin';
}

function clearRooms() {
  for (const view of state.rooms.values()) view.node.remove();
  state.rooms.clear();
  state.serverMutes.clear();
  $('rooms-empty').hidden = true;
  $('summary').textContent = '';
}

class RoomView {
  constructor(room) {
    this.room = room;
    this.members = new Map(); // member id → MemberView
    this.memberCount = 0;
    this.countsEl = el('span', { class: 'chip', 'data-testid': 'admin-room-counts' });
    this.closeBtn = el('button', {
      class: 'btn btn-danger-quiet btn-small',
      type: 'button',
      'data-testid': 'admin-close-room',
      onclick: () => this.close(),
    }, icon('close', { size: 16 }), 'Close room');
    this.listEl = el('div', { class: 'members', role: 'list', 'aria-label': `Members of ${room}` });
    this.node = el('section', { class: 'room card', 'data-testid': 'admin-room', 'data-room': room },
      el('header', { class: 'room-head' },
        el('span', { class: 'room-avatar', style: `background:${avatarColor(room)}`, 'aria-hidden': 'true' }, initials(room)),
        el('h2', { class: 'room-name', 'data-testid': 'admin-room-name', title: room }, room),
        this.countsEl,
        el('span', { class: 'spacer' }),
        this.closeBtn),
      this.listEl);
  }

  update(members) {
    const sorted = [...members]
      .filter((m) => typeof m?.id === 'string')
      .sort((a, b) => String(a.name).localeCompare(String(b.name), undefined, { sensitivity: 'base' }) || a.id.localeCompare(b.id));
    const seen = new Set();
    let previous = null;
    let tracks = 0;
    for (const m of sorted) {
      seen.add(m.id);
      let view = this.members.get(m.id);
      if (!view) {
        view = new MemberView(this);
        this.members.set(m.id, view);
      }
      view.update(m);
      const wanted = previous ? previous.node.nextSibling : this.listEl.firstChild;
      if (wanted !== view.node) this.listEl.insertBefore(view.node, wanted);
      previous = view;
      tracks += view.tracks.length;
    }
    for (const [id, view] of this.members) {
      if (!seen.has(id)) {
        view.node.remove();
        this.members.delete(id);
      }
    }
    this.memberCount = sorted.length;
    this.countsEl.textContent = `${plural(sorted.length, 'member')} · ${plural(tracks, 'track')}`;
  }

  async close() {
    const ok = await confirmAction({
      title: `Close “${this.room}”?`,
      text: `All ${plural(this.memberCount, 'member')} go back to the lobby and the room disappears. They can start it again.`,
      action: 'Close room',
    });
    if (!ok) return;
    await runAction(this.closeBtn, () => api('DELETE', roomPath(this.room)), `Could not close “${this.room}”`);
  }
}

const KIND_LABEL = { audio: 'Audio', video: 'Video' };

class MemberView {
  constructor(room) {
    this.room = room;
    this.data = null;
    this.tracks = [];
    this.avatarEl = el('span', { class: 'member-avatar', 'aria-hidden': 'true' });
    this.nameEl = el('span', { class: 'member-name', 'data-testid': 'admin-member-name' });
    this.idEl = el('code', { class: 'member-id', 'data-testid': 'admin-member-id' });
    this.flagsEl = el('span', { class: 'member-flags', 'data-testid': 'admin-member-flags' });
    this.rttEl = el('span', { class: 'stat', 'data-testid': 'admin-member-rtt' });
    this.muteBtns = {};
    for (const kind of ['audio', 'video']) {
      this.muteBtns[kind] = el('button', {
        class: 'btn btn-quiet btn-small',
        type: 'button',
        'data-testid': `admin-mute-${kind}`,
        'aria-pressed': 'false',
        onclick: () => this.toggleMute(kind),
      });
    }
    this.kickBtn = el('button', {
      class: 'btn btn-danger-quiet btn-small',
      type: 'button',
      'data-testid': 'admin-kick',
      onclick: () => this.kick(),
    }, icon('hangup', { size: 16 }), 'Kick');
    this.tracksBody = el('tbody');
    this.tracksTable = el('div', { class: 'table-wrap' },
      el('table', { class: 'tracks', 'data-testid': 'admin-tracks' },
        el('thead', {}, el('tr', {},
          el('th', { scope: 'col' }, 'Track'),
          el('th', { scope: 'col' }, 'Codec'),
          el('th', { scope: 'col', class: 'num', title: 'Received from the publisher over the last second' }, 'Bitrate'),
          el('th', { scope: 'col', class: 'num', title: 'Packets received since the track started' }, 'Packets'),
          el('th', { scope: 'col', class: 'num', title: 'Bytes received since the track started' }, 'Received'),
          el('th', { scope: 'col', class: 'num', title: "Packets missing from the publisher's sequence (after retransmission) since the start" }, 'Loss'),
          el('th', { scope: 'col', class: 'num', title: 'Members this track is forwarded to' }, 'Subscribers'),
          el('th', { scope: 'col', title: 'Whether an administrator stopped forwarding this track' }, 'Forwarding'))),
        this.tracksBody));
    this.noTracksEl = el('p', { class: 'no-tracks', 'data-testid': 'admin-no-tracks' }, 'Publishes no tracks.');
    this.node = el('article', { class: 'member', role: 'listitem', 'data-testid': 'admin-member' },
      el('div', { class: 'member-head' },
        this.avatarEl,
        el('div', { class: 'member-who' },
          el('div', { class: 'member-line' }, this.nameEl, this.flagsEl),
          el('div', { class: 'member-sub' }, this.idEl, el('span', { class: 'dot', 'aria-hidden': 'true' }, '·'), el('span', {}, 'RTT '), this.rttEl)),
        el('div', { class: 'member-actions' }, this.muteBtns.audio, this.muteBtns.video, this.kickBtn)),
      this.tracksTable,
      this.noTracksEl);
  }

  get label() {
    return this.data?.name || this.data?.id || 'this member';
  }

  update(m) {
    this.data = m;
    this.tracks = Array.isArray(m.tracks) ? m.tracks : [];
    const name = typeof m.name === 'string' && m.name ? m.name : m.id;
    this.node.dataset.memberId = m.id;
    this.node.dataset.name = name;
    this.nameEl.textContent = name;
    this.nameEl.title = name;
    this.avatarEl.textContent = initials(name);
    this.avatarEl.style.background = avatarColor(name);
    this.idEl.textContent = m.id;

    const flags = [];
    if (m.audio_muted) flags.push(el('span', { class: 'flag', 'data-flag': 'audio_muted' }, icon('micOff', { size: 14 }), 'Mic muted'));
    if (m.video_muted) flags.push(el('span', { class: 'flag', 'data-flag': 'video_muted' }, icon('videoOff', { size: 14 }), 'Camera off'));
    const flagText = flags.map((f) => f.textContent).join('|');
    if (this.flagsEl.dataset.text !== flagText) {
      this.flagsEl.dataset.text = flagText;
      this.flagsEl.replaceChildren(...flags);
    }
    this.node.dataset.audioMuted = String(!!m.audio_muted);
    this.node.dataset.videoMuted = String(!!m.video_muted);

    const rtt = typeof m.rtt_ms === 'number' && Number.isFinite(m.rtt_ms) ? m.rtt_ms : null;
    this.rttEl.textContent = rtt === null ? '—' : `${rtt < 10 ? rtt.toFixed(1) : Math.round(rtt)} ms`;
    this.rttEl.title = rtt === null ? 'Not measured yet' : 'Round-trip time from RTCP receiver reports';

    for (const kind of ['audio', 'video']) {
      const muted = this.serverMuted(kind);
      const btn = this.muteBtns[kind];
      if (btn.dataset.muted === String(muted)) continue;
      btn.dataset.muted = String(muted);
      btn.setAttribute('aria-pressed', String(muted));
      btn.classList.toggle('on', muted);
      const iconName = kind === 'audio' ? (muted ? 'mic' : 'micOff') : (muted ? 'video' : 'videoOff');
      btn.replaceChildren(icon(iconName, { size: 16 }), `${muted ? 'Unmute' : 'Mute'} ${kind}`);
      btn.title = muted
        ? `The server is not forwarding ${this.label}'s ${kind}; click to forward it again`
        : `Stop forwarding ${this.label}'s ${kind} to the room, whatever their client sends`;
    }

    this.tracksBody.replaceChildren(...this.tracks.map((t) => trackRow(t)));
    this.tracksTable.hidden = this.tracks.length === 0;
    this.noTracksEl.hidden = this.tracks.length > 0;
  }

  /** Whether the server mutes this member's `kind`: from its tracks, else from our last reply. */
  serverMuted(kind) {
    const tracks = this.tracks.filter((t) => t.kind === kind);
    if (tracks.length) return tracks.some((t) => t.server_muted === true);
    return state.serverMutes.get(`${this.data.id}/${kind}`) ?? false;
  }

  async toggleMute(kind) {
    const muted = !this.serverMuted(kind);
    const { id } = this.data;
    const what = `Could not ${muted ? 'mute' : 'unmute'} ${this.label}'s ${kind}`;
    const reply = await runAction(this.muteBtns[kind],
      () => api('POST', `${memberPath(this.room.room, id)}/mute`, { kind, muted }), what);
    if (reply) state.serverMutes.set(`${id}/${kind}`, typeof reply.muted === 'boolean' ? reply.muted : muted);
  }

  async kick() {
    const { id } = this.data;
    const name = this.label;
    const ok = await confirmAction({
      title: `Kick ${name}?`,
      text: `${name} is disconnected from “${this.room.room}” and the others see them leave. They can connect again.`,
      action: 'Kick',
    });
    if (!ok) return;
    await runAction(this.kickBtn, () => api('DELETE', memberPath(this.room.room, id)), `Could not kick ${name}`);
  }
}

function trackRow(t) {
  const kind = typeof t.kind === 'string' ? t.kind : '?';
  const codec = typeof t.codec === 'string' ? t.codec : '';
  const kbps = finite(t.bitrate_kbps);
  const loss = finite(t.loss_percent);
  const serverMuted = t.server_muted === true;
  return el('tr', {
    'data-testid': 'admin-track',
    'data-track-id': String(t.id ?? ''),
    'data-kind': kind,
    'data-server-muted': String(serverMuted),
    'data-kbps': kbps === null ? '' : String(kbps),
    class: serverMuted ? 'muted' : '',
  },
  el('td', {}, el('span', { class: 'kind' }, icon(kind === 'audio' ? 'mic' : 'video', { size: 14 }), KIND_LABEL[kind] ?? kind),
    el('code', { class: 'track-id', title: 'Track id' }, String(t.id ?? ''))),
  el('td', { title: codec, 'data-testid': 'admin-track-codec' }, codec.replace(/^(audio|video)\//i, '') || '—'),
  el('td', { class: 'num', 'data-testid': 'admin-track-bitrate' }, kbps === null ? '—' : bitrate(kbps)),
  el('td', { class: 'num', 'data-testid': 'admin-track-packets' }, count(t.packets)),
  el('td', { class: 'num' }, bytes(t.bytes)),
  el('td', { class: `num${loss !== null && loss >= 2 ? ' bad' : ''}`, 'data-testid': 'admin-track-loss' }, loss === null ? '—' : `${loss.toFixed(1)} %`),
  el('td', { class: 'num', 'data-testid': 'admin-track-subscribers' }, count(t.subscribers)),
  el('td', { 'data-testid': 'admin-track-forwarding' }, serverMuted
    ? el('span', { class: 'badge badge-danger' }, 'Muted by admin')
    : el('span', { class: 'badge badge-ok' }, 'Forwarded')));
}

// ---- actions, confirmation, notices -----------------------------------------------------------

/** Runs `call` with `button` busy; on failure shows `what: reason`. Returns the reply or null. */
async function runAction(button, call, what) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const reply = await call();
    return reply ?? {};
  } catch (err) {
    if (err.status !== 401) {
      const reason = err.status === 404 ? 'it is no longer there (404)' : err.message;
      showNotice(`${what}: ${reason}.`, { timeout: ACTION_NOTICE_MS });
    }
    return null;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    if (state.token) refreshNow();
  }
}

let confirmResolve = null;

/** Asks before a destructive action; resolves true when confirmed. */
function confirmAction({ title, text, action }) {
  const dialog = $('confirm');
  if (typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(`${title}\n\n${text}`));
  confirmResolve?.(false);
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = action;
  dialog.returnValue = '';
  dialog.showModal();
  $('confirm-ok').focus();
  return new Promise((resolve) => {
    confirmResolve = resolve;
  });
}

$('confirm').addEventListener('close', () => {
  const resolve = confirmResolve;
  confirmResolve = null;
  resolve?.($('confirm').returnValue === 'ok');
});

const notices = new Map(); // key → { node, timer }
let noticeSeq = 0;

/** Shows an error above the rooms. A `key` replaces an earlier notice with that key. */
function showNotice(text, { key = `n${++noticeSeq}`, timeout = 0 } = {}) {
  const existing = notices.get(key);
  if (existing?.node.dataset.text === text) return;
  dropNotice(key);
  const node = el('div', { class: 'notice', role: 'alert', 'data-testid': 'admin-error', dataset: { text, key } },
    icon('alert', { size: 18 }),
    el('span', { class: 'notice-text' }, text),
    el('button', { class: 'notice-close', type: 'button', 'aria-label': 'Dismiss', onclick: () => dropNotice(key) }, icon('close', { size: 14 })));
  const timer = timeout ? setTimeout(() => dropNotice(key), timeout) : null;
  notices.set(key, { node, timer });
  $('notices').append(node);
}

function dropNotice(key) {
  const n = notices.get(key);
  if (!n) return;
  clearTimeout(n.timer);
  n.node.remove();
  notices.delete(key);
}

function clearNotices() {
  for (const key of [...notices.keys()]) dropNotice(key);
}

function setStatus(kind, text) {
  const pill = $('status');
  pill.dataset.state = kind;
  pill.textContent = text;
}

// ---- formatting -------------------------------------------------------------------------------

const finite = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const plural = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
const pad = (n) => String(n).padStart(2, '0');
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

function count(v) {
  const n = finite(v);
  return n === null ? '—' : numberFormat.format(n);
}

function bitrate(kbps) {
  if (kbps >= 1000) return `${(kbps / 1000).toFixed(2)} Mbps`;
  return `${kbps < 10 ? kbps.toFixed(1) : Math.round(kbps)} kbps`;
}

function bytes(v) {
  const n = finite(v);
  if (n === null) return '—';
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = -1;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

// ---- wiring -----------------------------------------------------------------------------------

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) {
    $('login-error').textContent = 'Enter the admin token.';
    $('token').focus();
    return;
  }
  $('login-error').textContent = '';
  signIn(token);
});
$('token').addEventListener('input', () => { $('login-error').textContent = ''; });
$('sign-out').addEventListener('click', () => signOut());

const saved = loadToken();
if (saved) signIn(saved);
else signOut();
