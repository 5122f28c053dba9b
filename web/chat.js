// The chat panel: renders `chat` messages (own ones aligned right), system lines (joins/leaves),
// keeps the list pinned to the bottom unless the reader scrolled up, and owns the composer
// (Enter sends, Shift+Enter breaks the line, 2000 characters at most as in the protocol).

import { el, hhmm } from './ui.js';

export const CHAT_MAX_CHARS = 2000;
const COUNTER_FROM = 1800; // show the remaining-characters counter only near the limit
const NEAR_BOTTOM_PX = 80;
const GROUP_WINDOW_MS = 2 * 60 * 1000; // consecutive messages by one sender within this share a header

const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/giu;

/** Text with http(s) links made clickable; everything else stays plain text (no HTML parsing). */
function linkify(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    if (match.index > last) parts.push(text.slice(last, match.index));
    parts.push(el('a', { href: match[0], target: '_blank', rel: 'noopener noreferrer' }, match[0]));
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

export class ChatPanel {
  /**
   * @param {object} o
   * @param {HTMLElement} o.list  scrolling <ol>
   * @param {HTMLTextAreaElement} o.input
   * @param {HTMLButtonElement} o.send
   * @param {HTMLElement} o.counter
   * @param {HTMLButtonElement} o.newPill  "new messages" jump button
   * @param {HTMLElement} o.empty  empty-state text
   * @param {(text: string) => Promise<void>} o.onSend
   * @param {() => void} o.onIncoming  a message from someone else arrived
   */
  constructor(o) {
    Object.assign(this, o);
    this.last = null; // { senderId, ts } of the newest message, for grouping
    this.input.maxLength = CHAT_MAX_CHARS;
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener('input', () => this.refreshComposer());
    this.send.addEventListener('click', () => this.submit());
    this.list.addEventListener('scroll', () => {
      if (this.nearBottom()) this.newPill.hidden = true;
    });
    this.newPill.addEventListener('click', () => this.scrollToBottom(true));
    this.refreshComposer();
  }

  refreshComposer() {
    const length = this.input.value.length;
    this.send.disabled = this.input.value.trim().length === 0;
    this.counter.hidden = length < COUNTER_FROM;
    this.counter.textContent = `${length}/${CHAT_MAX_CHARS}`;
    // Grow with the text up to a few lines.
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 120)}px`;
  }

  async submit() {
    const text = this.input.value;
    if (!text.trim()) return;
    this.input.value = '';
    this.refreshComposer();
    try {
      await this.onSend(text.slice(0, CHAT_MAX_CHARS));
    } catch {
      // Give the text back so nothing typed is lost; the caller already told the user why.
      if (!this.input.value) {
        this.input.value = text;
        this.refreshComposer();
      }
    }
  }

  nearBottom() {
    const l = this.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom(smooth = false) {
    this.list.scrollTo({ top: this.list.scrollHeight, behavior: smooth ? 'smooth' : 'auto' });
    this.newPill.hidden = true;
  }

  append(node, { forceScroll = false } = {}) {
    const stick = forceScroll || this.nearBottom();
    this.empty.hidden = true;
    this.list.append(node);
    if (stick) this.scrollToBottom();
    else this.newPill.hidden = false;
  }

  /** @param {{from:{id,name}, text:string, ts:number}} msg  @param {boolean} own */
  addMessage(msg, own) {
    const ts = Number.isFinite(msg.ts) ? msg.ts : Date.now();
    const senderId = msg.from?.id ?? '?';
    const senderName = msg.from?.name ?? 'Anonymous';
    const continued = this.last && this.last.senderId === senderId && ts - this.last.ts < GROUP_WINDOW_MS;
    this.last = { senderId, ts };
    const time = new Date(ts);
    const node = el('li', {
      class: `msg${own ? ' own' : ''}${continued ? ' continued' : ''}`,
      'data-testid': 'chat-message',
      'data-own': own ? 'true' : 'false',
      'data-sender-id': senderId,
    },
    el('div', { class: 'msg-meta' },
      el('span', { class: 'msg-sender', 'data-testid': 'chat-sender', title: senderName }, own ? `${senderName} (you)` : senderName),
      el('time', { class: 'msg-time', datetime: time.toISOString(), title: time.toLocaleString() }, hhmm(ts))),
    el('div', { class: 'msg-bubble', 'data-testid': 'chat-text' }, linkify(String(msg.text ?? ''))));
    this.append(node, { forceScroll: own });
    if (!own) this.onIncoming?.();
  }

  /** A quiet centred line such as "carol joined". */
  addSystem(text, kind = 'info') {
    this.last = null;
    this.append(el('li', { class: `msg-system msg-system-${kind}`, 'data-testid': 'chat-system' }, text));
  }

  clear() {
    this.list.replaceChildren();
    this.last = null;
    this.empty.hidden = false;
    this.newPill.hidden = true;
  }

  focus() {
    this.input.focus({ preventScroll: true });
  }
}
