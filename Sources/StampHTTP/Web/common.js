// Shared by the owner's page (owner.js) and the customer's page (app.js):
// the API client, the session, the sign-in forms, the event feed, the beep and small DOM helpers.
//
// The pages are served with a strict Content-Security-Policy, so nothing here uses inline
// scripts, inline styles or inline event handlers: every listener is attached from code.

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Builds an element: el('li', {class: 'x', dataset: {id: 1}, on: {click: f}}, 'text', child). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'on') for (const [type, listener] of Object.entries(value)) node.addEventListener(type, listener);
    else if (name === 'text') node.textContent = value;
    else if (name in node && typeof value !== 'string') node[name] = value; // e.g. disabled, value (numbers)
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

/**
 * Marks a button busy while its action runs. aria-disabled rather than `disabled`: a disabled
 * button drops the keyboard focus, a busy one keeps it (and its click handler checks isBusy).
 */
export function setBusy(button, busy) {
  if (busy) button.setAttribute('aria-disabled', 'true');
  else button.removeAttribute('aria-disabled');
}
export const isBusy = (button) => button.getAttribute('aria-disabled') === 'true';

/** Shows or hides an element through the `hidden` attribute (style.css makes it win). */
export function show(node, visible = true) { node.hidden = !visible; }

/** A random UUID, also where crypto.randomUUID is missing (it needs a secure context). */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** localStorage as JSON; a browser that refuses storage (private mode, quota) just forgets. */
export const storage = {
  get(key) {
    try { const text = localStorage.getItem(key); return text === null ? null : JSON.parse(text); } catch { return null; }
  },
  set(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* ignore */ } },
  remove(key) { try { localStorage.removeItem(key); } catch { /* ignore */ } },
};

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function formatTime(iso) { return iso ? timeFormat.format(new Date(iso)) : ''; }
export function formatDateTime(iso) { return iso ? dateTimeFormat.format(new Date(iso)) : ''; }

/** Midnight today, in the browser's time zone. */
export function startOfToday() { const d = new Date(); d.setHours(0, 0, 0, 0); return d; }
export function isToday(iso) { return !!iso && new Date(iso) >= startOfToday(); }

export function plural(n, one, many = `${one}s`) { return `${n} ${n === 1 ? one : many}`; }

/** What a request asks for, in words: "2 stamps" or "a reward (Americano)". */
export function describeRequest(request, rewardItem) {
  if (request.kind === 'reward') return rewardItem ? `a reward (${rewardItem})` : 'a reward';
  return plural(request.count, 'stamp');
}

/** Status words shown next to a request: never colour alone. */
export const STATUS_TEXT = {
  pending: 'Pending', approved: 'Approved', rejected: 'Rejected', cancelled: 'Cancelled', expired: 'Expired',
};

/**
 * Merges a request into a map by id. A decided request never goes back to pending, so an older
 * snapshot that still says "pending" cannot undo an event that already said "approved": the
 * order in which snapshots and events arrive does not matter.
 */
export function mergeRequest(map, request) {
  const known = map.get(request.id);
  if (known && known.status !== 'pending' && request.status === 'pending') return false;
  map.set(request.id, request);
  return true;
}

/**
 * Brings a list's children in line with `items`, keyed by `keyOf`: new items are created, known
 * ones updated in place, gone ones removed. Nodes are never rebuilt, so a keyboard user's focus
 * stays put; when the focused node goes, focus moves to a neighbour's button (or `fallbackFocus`).
 */
export function reconcile(list, items, keyOf, create, update, fallbackFocus) {
  const wanted = new Set(items.map(keyOf));
  for (const node of [...list.children]) {
    if (wanted.has(node.dataset.key)) continue;
    if (node.contains(document.activeElement)) {
      const next = node.nextElementSibling ?? node.previousElementSibling;
      (next?.querySelector('button') ?? fallbackFocus)?.focus();
    }
    node.remove();
  }
  const known = new Map([...list.children].map((node) => [node.dataset.key, node]));
  let cursor = list.firstElementChild;
  for (const item of items) {
    let node = known.get(keyOf(item));
    if (node) update?.(node, item);
    else {
      node = create(item);
      node.dataset.key = keyOf(item);
    }
    if (node === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(node, cursor); // a new node, or one out of order
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const done = () => { clearTimeout(timer); signal?.removeEventListener('abort', done); window.removeEventListener('online', done); resolve(); };
  const timer = setTimeout(done, ms);
  signal?.addEventListener('abort', done);
  window.addEventListener('online', done); // the network came back: retry at once
});

// ---------------------------------------------------------------------------------------------
// The API client

export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.field = problem?.field;
    this.retryAfter = retryAfter;
    this.request = problem?.request; // a 409's request as it is now (decided by another member, say)
  }
}

/**
 * Calls the API and answers the decoded JSON (null for 204). Throws ApiError for an HTTP error
 * (the problem+json detail as message) and a TypeError when the network fails.
 */
export async function api(path, { method = 'GET', body, token, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, signal, cache: 'no-store' };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const retryAfter = Number(response.headers.get('Retry-After')) || undefined;
    throw new ApiError(response.status, data, retryAfter);
  }
  return data;
}

/** "40 s", "5 min": how long to wait, in words. */
export function formatWait(seconds) {
  return seconds < 90 ? plural(Math.ceil(seconds), 'second') : plural(Math.ceil(seconds / 60), 'minute');
}

/** A message fit to show for any error that api() can throw (or an Error of the page's own). */
export function errorText(error) {
  if (error instanceof ApiError) {
    return error.status === 429 && error.retryAfter ? `${error.message} (try again in ${formatWait(error.retryAfter)})` : error.message;
  }
  if (error?.name === 'AbortError') return 'Cancelled.';
  if (error instanceof Error && !(error instanceof TypeError) && error.message) return error.message;
  return NETWORK_TROUBLE;
}

/** What a call that got no answer says; cleared from the page once the feed is live again. */
export const NETWORK_TROUBLE = 'The server cannot be reached. Check the connection and try again.';

// ---------------------------------------------------------------------------------------------
// Problems next to their fields. A problem+json answer may name the `field` it is about: its
// detail goes right under that input (created on first use, tied to it with aria-describedby,
// the input marked aria-invalid and focused); a problem about no field of the form goes to
// `fallback`. Typing in the field clears its message.

function fieldErrorNode(input) {
  const id = `${input.id}-error`;
  let node = document.getElementById(id);
  if (!node) {
    node = el('p', { id, class: 'field-error' });
    (input.closest('.inline') ?? input).after(node);
    const described = input.getAttribute('aria-describedby');
    input.setAttribute('aria-describedby', described ? `${described} ${id}` : id);
    input.addEventListener('input', () => {
      node.textContent = '';
      input.removeAttribute('aria-invalid');
    });
  }
  return node;
}

/** Clears what showProblem showed in `form` (and in `fallback`). */
export function clearProblems(form, fallback) {
  for (const node of form.querySelectorAll('.field-error')) node.textContent = '';
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  if (fallback) fallback.textContent = '';
}

/**
 * Shows an error in `form`: under the input named by the problem's field (or by `aliases[field]`),
 * else in `fallback`. Answers the input it marked, or null.
 */
export function showProblem(form, error, fallback, aliases = {}) {
  const text = errorText(error);
  const name = error?.field ? aliases[error.field] ?? error.field : null;
  const input = name ? form.elements.namedItem(name) : null;
  if (!(input instanceof HTMLInputElement || input instanceof HTMLSelectElement) || !input.id) {
    if (fallback) fallback.textContent = text;
    return null;
  }
  const details = input.closest('details');
  if (details) details.open = true; // a field folded away (the claim code): unfold it
  show(input.closest('[hidden]') ?? input, true);
  fieldErrorNode(input).textContent = text;
  input.setAttribute('aria-invalid', 'true');
  input.focus();
  return input;
}

// ---------------------------------------------------------------------------------------------
// The session: a token and its account, kept in localStorage per page ("owner" or "app"),
// so an owner and a customer can be signed in side by side in one browser.

/** An API caller with the session's token; a refused token (401) calls `onRefused`, which signs the page out. */
export function authenticatedCall(session, onRefused) {
  return async function call(path, options = {}) {
    try {
      return await api(path, { ...options, token: session.token });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) onRefused();
      throw error;
    }
  };
}

/** Says something in the page's status line (read out by screen readers). */
export function say(text) {
  const message = $('message');
  message.textContent = text;
  message.title = text; // where the strip shows one line (the store's page), the whole text
}

export class Session {
  constructor(page, role) {
    this.role = role;
    this.tokenKey = `stampd.${page}.token`;
    this.accountKey = `stampd.${page}.account`;
    this.token = storage.get(this.tokenKey);
    this.account = storage.get(this.accountKey);
    // Another tab of this page signed in or out: follow it.
    window.addEventListener('storage', (event) => { if (event.key === this.tokenKey) location.reload(); });
  }

  get signedIn() { return !!(this.token && this.account); }

  /** Checks a stored token. Offline, it trusts the stored account: the feed will retry. */
  async restore() {
    if (!this.token) return false;
    try {
      this.account = await api('/v1/me', { token: this.token });
      storage.set(this.accountKey, this.account);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) { this.forget(); return false; }
    }
    return this.signedIn;
  }

  async signIn(login, password) { this.keep(await api('/v1/sessions', { method: 'POST', body: { login, password } })); }

  /** Signs up; a customer's `claimCode` (from a cafe) takes over the stamps the cafe gave that phone. */
  async signUp(name, login, password, claimCode) {
    const body = { role: this.role, login, password, name };
    if (claimCode) body.claimCode = claimCode;
    this.keep(await api('/v1/accounts', { method: 'POST', body }));
  }

  keep({ token, account }) {
    if (account.role !== this.role) {
      // Signed in, but on the wrong page: revoke the token we just got and say where to go.
      api('/v1/sessions/current', { method: 'DELETE', token }).catch(() => {});
      const where = account.role === 'owner' ? 'the owner page (/)' : 'the customer page (/app)';
      throw new Error(`This is a ${account.role} account: use ${where}.`);
    }
    this.token = token;
    this.account = account;
    storage.set(this.accountKey, account);
    storage.set(this.tokenKey, token);
  }

  async signOut() {
    const token = this.token;
    this.forget();
    if (token) await api('/v1/sessions/current', { method: 'DELETE', token }).catch(() => {});
  }

  forget() {
    this.token = null;
    this.account = null;
    storage.remove(this.tokenKey);
    storage.remove(this.accountKey);
  }
}

/**
 * Wires the sign-in and sign-up forms that both pages share (ids signin-*, signup-*, auth-error).
 * A problem about a field shows under it; the customer page's sign-up form also has an optional
 * claim code field, folded away in a <details> (signup-claim) until the customer opens it or a
 * problem is about it (a signed-in customer can also claim later, with POST /v1/me/claims).
 * `onSignedIn` runs after either succeeds.
 */
export function setupAuthForms(session, onSignedIn) {
  const error = $('auth-error');
  const claim = $('signup-claim');
  const submit = (form, action) => form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button[type=submit]');
    if (isBusy(button)) return;
    setBusy(button, true);
    for (const each of [$('signin-form'), $('signup-form')]) clearProblems(each, error);
    try {
      await action(new FormData(form));
      form.reset();
      if (claim) claim.open = false;
      onSignedIn();
    } catch (problem) {
      showProblem(form, problem, error);
    } finally {
      setBusy(button, false);
    }
  });
  submit($('signin-form'), (data) => session.signIn(data.get('login').trim(), data.get('password')));
  submit($('signup-form'), (data) => session.signUp(data.get('name').trim(), data.get('login').trim(),
    data.get('password'), (data.get('claimCode') ?? '').replace(/\s+/g, '')));
}

// ---------------------------------------------------------------------------------------------
// The event feed: one long poll per browser and account.
//
// Every tab asks for a Web Lock named after the account; the tab that holds it (the leader)
// runs the GET /v1/events loop and passes each batch to the other tabs over a BroadcastChannel
// of the same name. When the leader's tab closes, the lock frees and a waiting tab takes over.
// The cursor lives in localStorage, so a new leader, a reload or a reconnect carries on from the
// last batch delivered: nothing is skipped, and a batch seen twice changes nothing (the pages
// merge by request id, see mergeRequest).

const POLL_SECONDS = 25;
const MAX_BACKOFF_MS = 30_000;
const READY_PROBE_MS = 500;

export class EventFeed {
  /**
   * handlers: onEvents(events, {quiet}) — a batch, oldest first; quiet on the first sync of a
   *             browser that had no cursor yet (old events, no beeping);
   *           onReset() — the cursor was too old: reload the state from the API;
   *           onStatus(state, detail, retryAt) — 'connecting' | 'live' | 'reconnecting', detail in
   *             words, and while reconnecting when the next try is (ms since the epoch);
   *           onUnauthorized() — the token was refused;
   *           onMessage(message) — what another tab sent with post().
   */
  constructor(session, handlers) {
    this.session = session;
    this.handlers = handlers;
    const name = `stampd-events-${session.account.id}`;
    this.lockName = name;
    this.cursorKey = `stampd.cursor.${session.account.id}`;
    this.channel = 'BroadcastChannel' in window ? new BroadcastChannel(name) : null;
    this.stopper = new AbortController();
    this.leader = false;
    this.solo = false; // true where every tab polls for itself (no Web Locks)
    this.status = ['connecting', 'Connecting…'];
    this.waking = null; // while waiting to retry: ends the wait early (retryNow, the server is back)
  }

  /** Tries again now instead of at the end of the backoff ("Retry now"). */
  retryNow() {
    if (this.leader) this.waking?.abort();
    else this.channel?.postMessage({ kind: 'retry' });
  }

  start() {
    this.channel?.addEventListener('message', (event) => this.received(event.data));
    if (navigator.locks && this.channel) {
      this.setStatus('connecting', 'Connecting…');
      this.channel.postMessage({ kind: 'hello' }); // asks the leader, if any, for its status
      navigator.locks.request(this.lockName, { signal: this.stopper.signal }, () => this.lead())
        .catch((error) => { if (error.name !== 'AbortError') console.error('event lock', error); });
    } else {
      // No Web Locks (e.g. plain http on a LAN address is not a secure context): each tab polls
      // for itself and shares no batches, or the other tabs would see each event twice.
      this.solo = true;
      this.lead();
    }
  }

  /** Stops polling and releases the lock (sign-out). */
  stop() {
    this.stopper.abort();
    this.channel?.close();
  }

  /** Sends an application message to the other tabs of this account. */
  post(message) { this.channel?.postMessage({ kind: 'app', message }); }

  /** Passes what the leader learnt to the follower tabs. */
  share(message) { if (this.leader && !this.solo) this.channel?.postMessage(message); }

  setStatus(state, detail, retryAt = null) {
    this.status = [state, detail, retryAt];
    this.handlers.onStatus?.(state, detail, retryAt);
    this.share({ kind: 'status', state, detail, retryAt });
  }

  /** A message from another tab. */
  received(data) {
    switch (data?.kind) {
      case 'batch': this.handlers.onEvents(data.events, { quiet: data.quiet }); break;
      case 'reset': this.handlers.onReset(); break;
      case 'status': if (!this.leader) this.handlers.onStatus?.(data.state, `${data.detail} (through another tab)`, data.retryAt); break;
      case 'hello': this.share({ kind: 'status', state: this.status[0], detail: this.status[1], retryAt: this.status[2] }); break;
      case 'retry': if (this.leader) this.waking?.abort(); break;
      case 'app': this.handlers.onMessage?.(data.message); break;
      default: break;
    }
  }

  /** The leader's loop; returns (and so frees the lock) only when stopped. */
  async lead() {
    this.leader = true;
    const stop = this.stopper.signal;
    let failures = 0;
    this.setStatus('connecting', 'Connecting…');
    while (!stop.aborted) {
      const cursor = storage.get(this.cursorKey);
      // Until a poll has answered, the page cannot say it is live: the first poll (and the first
      // after an error) waits only 1 s, so the indicator turns to "Live" at once, then 25 s ones.
      const live = this.status[0] === 'live';
      const query = new URLSearchParams({ timeout: String(live ? POLL_SECONDS : 1) });
      if (cursor !== null) query.set('after', cursor);
      // A watchdog in case a connection dies without an error (a phone leaving Wi-Fi).
      const attempt = new AbortController();
      const abort = () => attempt.abort();
      stop.addEventListener('abort', abort);
      const watchdog = setTimeout(abort, (POLL_SECONDS + 15) * 1000);
      try {
        const batch = await api(`/v1/events?${query}`, { token: this.session.token, signal: attempt.signal });
        if (stop.aborted) break;
        if (!live) this.setStatus('live', 'Live');
        failures = 0;
        if (batch.reset) {
          this.handlers.onReset();
          this.share({ kind: 'reset' });
        } else if (batch.events.length > 0) {
          const quiet = cursor === null;
          this.handlers.onEvents(batch.events, { quiet });
          this.share({ kind: 'batch', events: batch.events, quiet });
        }
        // Saved after the batch is delivered: a crash in between repeats it, never skips it.
        storage.set(this.cursorKey, batch.cursor);
      } catch (error) {
        if (stop.aborted) break;
        if (error instanceof ApiError && error.status === 401) { this.handlers.onUnauthorized?.(); break; }
        if (error instanceof ApiError && error.status === 400 && error.field === 'after') {
          storage.remove(this.cursorKey); // a cursor the server does not understand: start over
          this.handlers.onReset();
          this.share({ kind: 'reset' });
          continue;
        }
        failures += 1;
        // Exponential backoff with jitter (1 s, 2 s, 4 s … 30 s); the server's Retry-After wins.
        const backoff = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (failures - 1));
        const delay = error.retryAfter ? error.retryAfter * 1000 : backoff / 2 + Math.random() * backoff / 2;
        this.setStatus('reconnecting', 'Reconnecting', Date.now() + delay);
        console.warn('event poll failed', error);
        await this.waitToRetry(delay, stop);
      } finally {
        clearTimeout(watchdog);
        stop.removeEventListener('abort', abort);
      }
    }
    this.leader = false;
  }

  /**
   * Waits `delay` ms before the next try, or less: "Retry now", the network coming back, or the
   * server answering /readyz again (asked twice a second, so the page is live well within 2 s of
   * the server's return even deep into the backoff).
   */
  async waitToRetry(delay, stop) {
    const waking = new AbortController();
    this.waking = waking;
    const end = () => waking.abort();
    stop.addEventListener('abort', end);
    const probe = setInterval(async () => {
      try {
        const answer = await fetch('/readyz', { cache: 'no-store', signal: AbortSignal.timeout(450) });
        if (answer.ok) end();
      } catch { /* still away */ }
    }, READY_PROBE_MS);
    await sleep(delay, waking.signal);
    clearInterval(probe);
    stop.removeEventListener('abort', end);
    this.waking = null;
  }
}

// ---------------------------------------------------------------------------------------------
// The beep: WebAudio, no audio file. Most browsers start audio only after a user gesture: the
// context is made at once (running where the browser allows it), and resumed on the first click
// or key press. `onChange` hears when it starts, so a page can say that sound is held back.

export class Beeper {
  constructor() {
    this.context = null;
    this.onChange = null;
    const unlock = () => this.unlock();
    window.addEventListener('pointerdown', unlock, { capture: true });
    window.addEventListener('keydown', unlock, { capture: true });
  }

  unlock() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    if (!this.context) {
      this.context = new Context();
      this.context.addEventListener('statechange', () => this.onChange?.());
    }
    if (this.context.state === 'suspended') this.context.resume().catch(() => {});
  }

  get supported() { return !!(window.AudioContext || window.webkitAudioContext); }
  get ready() { return this.context?.state === 'running'; }

  /** Two short rising tones. */
  beep() {
    if (!this.ready) return;
    const now = this.context.currentTime;
    [[880, 0], [1320, 0.18]].forEach(([frequency, offset]) => {
      const oscillator = this.context.createOscillator();
      const gain = this.context.createGain();
      oscillator.type = 'sine';
      oscillator.frequency.value = frequency;
      gain.gain.setValueAtTime(0.0001, now + offset);
      gain.gain.exponentialRampToValueAtTime(0.3, now + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + offset + 0.15);
      oscillator.connect(gain).connect(this.context.destination);
      oscillator.start(now + offset);
      oscillator.stop(now + offset + 0.16);
    });
  }
}

/**
 * Shows the feed's state: the header indicator (text, not colour alone) and, while the connection
 * is lost, the full-width banner (#outage, where the page has one) with a live countdown to the
 * next try. Once live, no "cannot be reached" from an earlier call is left on the page.
 */
export function showConnection(state, detail, retryAt = null) {
  const node = $('connection');
  node.dataset.state = state;
  node.textContent = state === 'reconnecting' && retryAt ? `${detail}…` : detail;
  const banner = $('outage');
  clearInterval(outageTimer);
  if (banner) {
    show(banner, state === 'reconnecting');
    if (state === 'reconnecting') {
      const tick = () => {
        const left = Math.max(0, Math.ceil(((retryAt ?? Date.now()) - Date.now()) / 1000));
        $('outage-retry-in').textContent = left > 0 ? `Trying again in ${left} s.` : 'Trying again now…';
      };
      tick();
      outageTimer = setInterval(tick, 250);
    }
  }
  if (state === 'live') {
    for (const text of document.querySelectorAll('#message, .error, .item-status')) {
      if (text.textContent.includes(NETWORK_TROUBLE)) text.textContent = '';
    }
  }
}
let outageTimer = 0;
