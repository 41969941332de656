// The store's page (GET /), for its owner and staff: sign in, pick the store from the stores one is
// a member of (or join one with an invitation code), and approve or reject requests as they come;
// find a customer at the counter and stamp them directly, add an app user by the member code their
// phone shows, or register a walk-in by phone (the store holds their card until they claim it).
//
// State: the open store and a map of its requests (pending ones, and today's decided ones for the
// totals). It is filled from the API on load and on a feed reset, then kept current by the event
// feed; both go through mergeRequest, so their order does not matter. Every member's devices get
// the store's events, so a request another member decided leaves this queue at once. The customers found (or
// added) are listed as found; their cards as the last stamping answered them, until the next search.
import {
  $, ApiError, authenticatedCall, say, Beeper, clearProblems, describeRequest, el, errorText, EventFeed, formatTime, isToday, mergeRequest,
  plural, reconcile, Session, isBusy, setBusy, setupAuthForms, show, showConnection, showProblem, startOfToday, STATUS_TEXT,
  storage,
} from '/assets/common.js';
import { Queue } from '/assets/queue.js';
import { Settings } from '/assets/settings.js';
import { Numbers } from '/assets/numbers.js';
import { Records } from '/assets/records.js';
import { drawSign } from '/assets/sign.js';

const session = new Session('owner', 'owner');
const beeper = new Beeper();
const state = {
  store: null,
  role: null, // the caller's role at the open store: 'owner' or 'staff'
  memberships: [], // [{role, store}] from GET /v1/me/stores
  requests: new Map(), // id → request, of the open store
  loading: new Set(), // while a snapshot loads, the events that arrive meanwhile, to apply on top
  feed: null,
  noticed: [], // the requests the notice is about: it goes when none of them is pending
  noticeTimer: 0,
  customers: [], // the customers found or registered: {id, name, login, walkIn}
  customerCards: new Map(), // customer id → their card here, as the last stamping answered it
  decisionErrors: new Map(), // request id → why the owner's last approve/reject of it failed, shown on its row
  counter: { code: '', changesAt: 0, timer: 0 }, // the counter code on screen, and when it changes
  wakeLock: null, // keeps a counter tablet's screen on while the page is open
  view: null, // the view on screen: counter, history, customers, numbers or settings
};
const storeKey = () => `stampd.owner.store.${session.account.id}`;
const soundKey = 'stampd.owner.sound';

/** Every authenticated call goes through here: a refused token signs the page out. */
const call = authenticatedCall(session, () => sessionEnded());

const queue = new Queue($('pending-list'), $('pending-heading'), {
  decide: (request, action, line, reason) => decide(request, action, line, reason),
  undo: (request, button) => undo(request, button),
  cardLine: (card) => cardLine(card),
  rewardItem: () => state.store?.rewardItem ?? '',
  redraw: () => render(),
  errors: state.decisionErrors,
});

const settings = new Settings(call, (store) => storeChanged(store));
const numbers = new Numbers(call);
const records = new Records(call, () => state.store?.rewardItem ?? '', (name) => showView(name));


// ---------------------------------------------------------------------------------------------
// Signing in and out

function signedIn() {
  show($('auth'), false);
  show($('session-bar'));
  $('account-name').textContent = session.account.name;
  say('');
  state.feed = new EventFeed(session, {
    onEvents, onReset: loadSnapshot, onStatus: connectionChanged, onUnauthorized: sessionEnded,
  });
  state.feed.start();
  chooseStore();
}

/** Opens the store this device used last, or the only one, or lists them to pick from. */
async function chooseStore() {
  await loadMemberships();
  const remembered = storage.get(storeKey());
  const known = state.memberships.find((m) => m.store.id === remembered);
  if (known) openStore(known.store.id);
  else if (state.memberships.length === 1) openStore(state.memberships[0].store.id);
  else showSetup();
}

async function loadMemberships() {
  try {
    state.memberships = (await call('/v1/me/stores')).stores;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    $('store-error').textContent = errorText(error);
  }
}

async function signOut() {
  state.feed?.stop();
  await session.signOut();
  location.reload();
}

function sessionEnded() {
  if (!session.token) return;
  state.feed?.stop();
  session.forget();
  for (const id of ['session-bar', 'store-setup', 'dashboard']) show($(id), false);
  show($('auth'));
  $('auth-error').textContent = 'Your session has ended. Please sign in again.';
}

// ---------------------------------------------------------------------------------------------
// Choosing the store: one of the stores the caller is a member of (GET /v1/me/stores), so a new
// device never needs a store id; the last one opened is remembered per account and device.

function showSetup(error = '') {
  state.store = null;
  state.role = null;
  show($('dashboard'), false);
  show($('store-setup'));
  $('store-error').textContent = error;
  document.title = 'stampd — cafe owner';
  const list = $('my-stores-list');
  list.replaceChildren(...state.memberships.map(({ role, store }) => el('li', {},
    el('button', { type: 'button', class: 'store-choice', dataset: { testid: 'store-choice', storeId: store.id },
      on: { click: () => openStore(store.id) } },
      el('strong', { text: store.name }), el('span', { class: 'role-badge', text: role === 'owner' ? 'Owner' : 'Staff' })))));
  show($('my-stores'), state.memberships.length > 0);
}

async function openStore(id) {
  try {
    const store = await call(`/v1/stores/${encodeURIComponent(id)}`);
    let membership = state.memberships.find((m) => m.store.id === store.id);
    if (!membership) {
      await loadMemberships();
      membership = state.memberships.find((m) => m.store.id === store.id);
    }
    if (!membership) throw new Error('You are not a member of that store.');
    state.store = store;
    state.role = membership.role;
    state.requests = new Map();
    state.decisionErrors.clear();
    queue.clear();
    resetCustomers();
    storage.set(storeKey(), store.id);
    $('store-title').textContent = store.name;
    $('store-id').textContent = store.id;
    $('store-role').textContent = state.role === 'owner' ? 'Owner' : 'Staff';
    show($('store-setup'), false);
    show($('dashboard'));
    show($('staff-panel'), state.role === 'owner');
    show($('invitation'), false);
    for (const tab of document.querySelectorAll('.view-tab[data-owner-only]')) tab.hidden = state.role !== 'owner';
    if (state.role === 'owner') settings.show(store);
    records.reset(store, state.role);
    state.view = null;
    const asked = location.hash.slice(1);
    const allowed = ['history', 'customers', 'sign', ...(state.role === 'owner' ? ['numbers', 'settings'] : [])];
    showView(allowed.includes(asked) ? asked : 'counter');
    render();
    showCounterCode();
    keepScreenOn();
    await loadSnapshot();
    if (state.role === 'owner') await loadStaff();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    const gone = error instanceof ApiError ? error.status === 404 || error.status === 403 : !(error instanceof TypeError);
    if (gone && storage.get(storeKey()) === id) storage.remove(storeKey()); // not a member (any more)
    showSetup(error instanceof ApiError || error instanceof TypeError ? errorText(error) : error.message);
  }
}

/** The store as the owner's last change left it: the title, the queue's reward wording, the list to switch from. */
function storeChanged(store) {
  state.store = store;
  $('store-title').textContent = store.name;
  const membership = state.memberships.find((m) => m.store.id === store.id);
  if (membership) membership.store = store;
  render();
}

/** The counter (the queue, customers, the code) or the owner's settings; the feed runs under both. */
function showView(name) {
  const opening = state.view !== name;
  state.view = name;
  document.body.dataset.view = name; // print styles: the sign alone
  for (const panel of document.querySelectorAll('[data-view-panel]')) panel.hidden = panel.dataset.viewPanel !== name;
  for (const tab of document.querySelectorAll('.view-tab')) {
    if (tab.dataset.view === name) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  if (name === 'numbers') numbers.open(state.store);
  else numbers.close();
  // A view of records reads when it opens (the feed does not keep it current).
  if (opening && name === 'history') records.openHistory();
  if (opening && name === 'customers') records.openCustomers();
  if (opening && name === 'sign') drawSign(state.store).catch((error) => say(`The sign could not be drawn: ${error.message}`));
  const hash = name === 'counter' ? '' : `#${name}`;
  if (location.hash !== hash) history.replaceState(null, '', `${location.pathname}${location.search}${hash}`);
}

async function createStore(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = new FormData(form);
  const body = {
    name: data.get('name').trim(),
    rewardItem: data.get('rewardItem').trim(),
    stampsPerReward: Number(data.get('stampsPerReward')),
  };
  const address = data.get('address').trim();
  if (address) body.address = address;
  const button = form.querySelector('button');
  if (isBusy(button)) return;
  setBusy(button, true);
  try {
    const store = await call('/v1/stores', { method: 'POST', body });
    storage.set(storeKey(), store.id);
    state.memberships.push({ role: 'owner', store });
    form.reset();
    await openStore(store.id);
    say(`Store created. Customers find it by its name; its id is ${store.id}.`);
  } catch (error) {
    $('store-error').textContent = errorText(error);
  } finally {
    setBusy(button, false);
  }
}

// ---------------------------------------------------------------------------------------------
// The store's requests: a snapshot from the API, then the events

/**
 * Loads the pending requests and today's requests (for the totals) of the open store, replacing
 * what the page knew (after a feed reset, some of it may be stale). Events that arrive while it
 * loads are kept aside and merged on top, since the snapshot may predate them.
 */
async function loadSnapshot() {
  const store = state.store;
  if (!store) return;
  const meanwhile = new Map();
  state.loading.add(meanwhile);
  const path = `/v1/stores/${encodeURIComponent(store.id)}/requests`;
  // A request made just before midnight can be decided after it: look back one TTL further.
  const since = startOfToday().getTime() - store.requestTtlSeconds * 1000;
  try {
    const [pending, recent] = await Promise.all([
      fetchRequests(`${path}?status=pending`, () => true),
      fetchRequests(path, (request) => new Date(request.createdAt).getTime() >= since),
    ]);
    if (state.store !== store) return; // the owner switched stores meanwhile
    const requests = new Map();
    for (const request of [...pending, ...recent, ...meanwhile.values()]) mergeRequest(requests, request);
    state.requests = requests;
    render();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) say(`Could not load the requests: ${errorText(error)}`);
  } finally {
    state.loading.delete(meanwhile);
  }
}

/** Follows nextCursor through a newest-first list while `keep` holds (at most 20 pages). */
async function fetchRequests(path, keep) {
  const requests = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const query = new URLSearchParams({ limit: '100' });
    if (cursor) query.set('cursor', cursor);
    const answer = await call(`${path}${path.includes('?') ? '&' : '?'}${query}`);
    for (const request of answer.requests) {
      if (!keep(request)) return requests;
      requests.push(request);
    }
    cursor = answer.nextCursor;
    if (!cursor) break;
  }
  return requests;
}

/** Takes in a newer version of a request (from an event or an answer). */
function learn(request) {
  mergeRequest(state.requests, request);
  for (const meanwhile of state.loading) mergeRequest(meanwhile, request);
}

/** A batch of events from the feed (this tab's poll, or another tab's). */
function onEvents(events, { quiet }) {
  if (!state.store) return;
  const created = [];
  const expired = [];
  for (const event of events) {
    if (event.type === 'member.joined' || event.type === 'member.removed') {
      if (event.data?.storeId === state.store.id && state.role === 'owner' && !quiet) loadStaff();
      continue;
    }
    const request = event.data?.request;
    if (!request || request.storeId !== state.store.id) continue; // another of the owner's stores
    const wasPending = state.requests.get(request.id)?.status === 'pending';
    learn(request);
    if (event.type === 'request.created') created.push(request.id);
    if (event.type === 'request.expired' && wasPending) expired.push(request);
  }
  render();
  if (events.length > 0) numbers.changed();
  // Only requests that are still waiting deserve a beep: a replay of old events stays silent.
  const waiting = created.map((id) => state.requests.get(id)).filter((r) => r?.status === 'pending');
  if (waiting.length > 0 && !quiet) announce(waiting);
  else if (expired.length > 0 && !quiet) announceExpired(expired);
  for (const request of waiting) {
    $('pending-list').querySelector(`[data-request-id="${request.id}"]`)?.classList.add('new');
  }
}

/** Nobody decided in time: say so, so that the customer at the counter is not left waiting. */
function announceExpired(requests) {
  const [first] = requests;
  const text = requests.length === 1
    ? `Expired: ${first.customerName}'s request for ${describeRequest(first, state.store.rewardItem)} waited too long. They can ask again.`
    : `${requests.length} requests expired before anyone decided.`;
  showNotice(text, []);
}

/** The visible and audible notice of new requests; a vibration and, while the tab is hidden, a
 * system notification where the owner allowed them. */
function announce(requests) {
  const [first] = requests;
  const text = requests.length === 1
    ? `New request: ${first.customerName} asks for ${describeRequest(first, state.store.rewardItem)}.`
    : `${requests.length} new requests.`;
  showNotice(text, requests.map((r) => r.id));
  // Browsers allow vibration only after the page was touched (and log an error otherwise).
  if (navigator.userActivation?.hasBeenActive) navigator.vibrate?.([120, 60, 120]);
  if (document.hidden && 'Notification' in window && Notification.permission === 'granted') {
    try {
      new Notification(state.store.name, { body: text, tag: 'stampd-requests', icon: '/assets/icon.svg' });
    } catch { /* some browsers allow notifications only from a service worker */ }
  }
}

/** The notice at the top (with a beep when sound is on); it goes after 15 s, or once none of
 * the requests it is about (`ids`) is pending any more. */
function showNotice(text, ids) {
  const notice = $('notice');
  state.noticed = ids;
  notice.textContent = text;
  notice.title = text;
  show(notice);
  notice.classList.remove('flash');
  void notice.offsetWidth; // restart the animation
  notice.classList.add('flash');
  clearTimeout(state.noticeTimer);
  state.noticeTimer = setTimeout(() => show(notice, false), 15_000);
  if (storage.get(soundKey) !== false) beeper.beep();
}

/**
 * Approves or rejects one request, with feedback on the item at once. When the decision fails,
 * the page re-reads the request: still pending, its row gets its buttons back; decided meanwhile
 * (elsewhere, cancelled, expired), it moves to "Decided today". Either way the reason shows on
 * the request's own row (state.decisionErrors), not only in the status line at the top.
 */
async function decide(request, action, item, reason = null) {
  const buttons = [...item.querySelectorAll('button')];
  if (buttons.some(isBusy)) return; // already on its way
  buttons.forEach((button) => setBusy(button, true));
  item.classList.add('busy');
  state.decisionErrors.delete(request.id);
  // Said on the button, not in a line under it: the row keeps its height while the call runs.
  const pressed = item.querySelector(action === 'reject' ? '[data-testid="reject-confirm"], [data-testid="reject"]' : '[data-testid="approve"]');
  pressed.textContent = action === 'approve' ? 'Approving…' : 'Rejecting…';
  itemStatus(item, '');
  try {
    const answer = await call(`/v1/requests/${encodeURIComponent(request.id)}/${action}`,
      { method: 'POST', ...(reason ? { body: { reason } } : {}) });
    learn(answer.request);
    const what = describeRequest(answer.request, state.store.rewardItem);
    say(`${STATUS_TEXT[answer.request.status]}: ${what} for ${answer.request.customerName}.`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // signed out: the page is gone
    const text = `${action === 'approve' ? 'Not approved' : 'Not rejected'}: ${errorText(error)}`;
    state.decisionErrors.set(request.id, text);
    say(text);
    if (error instanceof ApiError) {
      // The server said no: ask it what the request is now (decided elsewhere, cancelled, expired, or still pending).
      const now = await call(`/v1/requests/${encodeURIComponent(request.id)}`).catch(() => null);
      if (now) learn(now);
    }
  } finally {
    if (item.isConnected) {
      buttons.forEach((button) => setBusy(button, false));
      pressed.textContent = action === 'approve' ? 'Approve' : 'Reject';
      item.classList.remove('busy');
    }
    render();
  }
}

// ---------------------------------------------------------------------------------------------
// The counter code: fetched when it changes, with a countdown to the next one

async function showCounterCode() {
  clearTimeout(state.counter.timer);
  const store = state.store;
  if (!store) return;
  try {
    const now = await call(`/v1/stores/${encodeURIComponent(store.id)}/counter-code`);
    if (state.store !== store) return;
    state.counter.code = now.code;
    state.counter.changesAt = Date.parse(now.changesAt);
    $('counter-code').textContent = `${now.code.slice(0, 3)} ${now.code.slice(3)}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    $('counter-code').textContent = '— — —';
    state.counter.changesAt = Date.now() + 5_000; // try again soon
  }
  tickCounterCode();
}

function tickCounterCode() {
  const left = Math.max(0, Math.ceil((state.counter.changesAt - Date.now()) / 1000));
  $('counter-changes').textContent = left > 0 ? `in ${left} s` : 'now';
  state.counter.timer = left > 0 ? setTimeout(tickCounterCode, 1000) : setTimeout(showCounterCode, 250);
}

// ---------------------------------------------------------------------------------------------
// Staff: the owner invites baristas, sees when each was last active, and removes them

async function joinStore(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector('button');
  if (isBusy(button)) return;
  setBusy(button, true);
  $('join-error').textContent = '';
  try {
    const joined = await call('/v1/me/stores', { method: 'POST', body: { invitationCode: $('join-code').value.trim() } });
    state.memberships.push(joined);
    form.reset();
    await openStore(joined.store.id);
    say(`You joined ${joined.store.name} as staff.`);
  } catch (error) {
    $('join-error').textContent = errorText(error);
  } finally {
    setBusy(button, false);
  }
}

async function loadStaff() {
  const store = state.store;
  try {
    const { members } = await call(`/v1/stores/${encodeURIComponent(store.id)}/members`);
    if (state.store !== store) return;
    $('staff-list').replaceChildren(...members.map(staffItem));
    $('staff-error').textContent = '';
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) $('staff-error').textContent = errorText(error);
  }
}

function staffItem(member) {
  const active = member.lastActiveAt ? `last active ${isToday(member.lastActiveAt) ? '' : new Date(member.lastActiveAt).toLocaleDateString() + ' '}${formatTime(member.lastActiveAt)}` : 'not active yet';
  return el('li', { class: 'member', dataset: { testid: 'member', memberId: member.id, role: member.role } },
    el('div', {}, el('strong', { text: member.name }), ` · ${member.role === 'owner' ? 'Owner' : 'Staff'} · `,
      el('span', { class: 'when', text: active })),
    member.role === 'staff'
      ? el('button', { type: 'button', class: 'quiet', dataset: { testid: 'remove-member' },
        'aria-label': `Remove ${member.name} from the staff`, on: { click: (event) => removeMember(member, event.currentTarget) } }, 'Remove')
      : null);
}

async function invite() {
  const button = $('invite-submit');
  if (isBusy(button)) return;
  setBusy(button, true);
  try {
    const invitation = await call(`/v1/stores/${encodeURIComponent(state.store.id)}/invitations`, { method: 'POST' });
    $('invitation-code').textContent = invitation.code;
    $('invitation-until').textContent = `${new Date(invitation.expiresAt).toLocaleDateString()} ${formatTime(invitation.expiresAt)}`;
    $('invitation-until').dateTime = invitation.expiresAt;
    show($('invitation'));
    $('staff-error').textContent = '';
  } catch (error) {
    $('staff-error').textContent = errorText(error);
  } finally {
    setBusy(button, false);
  }
}

async function removeMember(member, button) {
  if (isBusy(button)) return;
  if (!confirm(`Remove ${member.name}? They are signed out on every device at once.`)) return;
  setBusy(button, true);
  try {
    await call(`/v1/stores/${encodeURIComponent(state.store.id)}/members/${encodeURIComponent(member.id)}`, { method: 'DELETE' });
    say(`${member.name} is no longer on the staff.`);
    await loadStaff();
  } catch (error) {
    $('staff-error').textContent = errorText(error);
    setBusy(button, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Customers at the counter

const storePath = () => `/v1/stores/${encodeURIComponent(state.store.id)}`;

function resetCustomers() {
  state.customers = [];
  state.customerCards = new Map();
  renderCustomers();
  show($('customers-empty'), false);
  show($('claim'), false);
  for (const form of [$('find-form'), $('member-form'), $('walkin-form')]) {
    form.reset();
    clearProblems(form, form.querySelector('.error'));
  }
}

/** Lists `customers` as the answer to a new search (or a registration): what the page knew of their cards may be stale now. */
function listCustomers(customers) {
  state.customers = customers;
  state.customerCards = new Map();
  renderCustomers();
  for (const item of $('customer-list').children) itemStatus(item, '');
  show($('customers-empty'), false);
}

/** A problem the page finds itself, shown like the server's (under `field`). */
const localProblem = (message, field) => Object.assign(new Error(message), { field });

/**
 * Finds the customers who have a card at this store (the API never lists anyone else). Digits
 * (4 or more; spaces, dashes, brackets and a leading + allowed) look for the end of a phone number;
 * other text looks for a name (2 or more characters) and, when it could be one, an exact login
 * (an e-mail or a user name). Someone new is not found: the empty answer says how to add them.
 */
async function findCustomers(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = $('find-submit');
  const text = $('find-q').value.trim();
  if (isBusy(button) || !text) return;
  clearProblems(form, $('find-error'));
  const digits = text.replace(/\D/g, '');
  const phoneLike = /^\+?[\d\s().-]+$/.test(text);
  if (phoneLike && digits.length < 4) {
    showProblem(form, localProblem('Type at least the last 4 digits of the phone number.', 'q'), $('find-error'));
    return;
  }
  if (!phoneLike && text.length < 2) {
    showProblem(form, localProblem('Type at least 2 letters of the name.', 'q'), $('find-error'));
    return;
  }
  setBusy(button, true);
  const query = (parameters) => call(`${storePath()}/customers?${new URLSearchParams(parameters)}`).then((answer) => answer.customers);
  try {
    let customers;
    if (phoneLike) {
      customers = await query({ phoneEndsWith: digits.slice(-20) });
    } else {
      // A login has no spaces: "Wally W" can only be a name.
      const couldBeLogin = !/[\s:]/.test(text);
      const [byName, byLogin] = await Promise.all([query({ name: text }), couldBeLogin ? query({ login: text }) : []]);
      customers = [...byLogin, ...byName.filter((c) => !byLogin.some((l) => l.id === c.id))];
    }
    listCustomers(customers);
    if (customers.length === 0) showNobodyFound(text, phoneLike, digits);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      showProblem(form, error, $('find-error'), { phoneEndsWith: 'q', login: 'q', name: 'q' });
    }
  } finally {
    setBusy(button, false);
  }
}

/** Nobody with a card here matched: say so, and how to add someone new (member code or walk-in). */
function showNobodyFound(text, phoneLike, digits) {
  const what = phoneLike ? `a phone number ending in ${digits}` : `“${text}” in their name or as their login`;
  $('customers-empty-text').textContent = `Nobody with a card here has ${what}. New at this cafe? If they have the app,`
    + ' enter the member code their phone shows; if not, register them as a walk-in by phone.';
  // A whole phone number (6 digits or more) is handed to the walk-in form, ready to register.
  $('empty-walkin').dataset.phone = phoneLike && digits.length >= 6 ? text : '';
  show($('customers-empty'));
}

/** Lists the one customer just added (by member code or as a walk-in), ready to stamp. */
function listAdded(customer) {
  listCustomers([customer]);
  $('customer-list').querySelector('input')?.focus();
}

/** Adds an app user as a customer of this store by the member code their phone shows (an empty card). */
async function addByMemberCode(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = $('member-submit');
  if (isBusy(button)) return;
  clearProblems(form, $('member-error'));
  const code = $('member-code').value.trim();
  if (code.replace(/[\s-]/g, '').length === 0) return;
  setBusy(button, true);
  try {
    const { customer } = await call(`${storePath()}/customers`, { method: 'POST', body: { memberCode: code } });
    form.reset();
    show($('claim'), false); // a claim code shown for someone else is not about this customer
    listAdded(customer);
    say(`${customer.name} (${customer.login}) has a card here now. Stamp them below.`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showProblem(form, error, $('member-error'));
  } finally {
    setBusy(button, false);
  }
}

/** Registers a walk-in customer by phone; shows their claim code and lists them, ready to stamp. */
async function registerWalkIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = $('walkin-submit');
  if (isBusy(button)) return;
  const data = new FormData(form);
  const body = { phone: data.get('phone').trim() };
  const name = data.get('name').trim();
  if (name) body.name = name;
  setBusy(button, true);
  clearProblems(form, $('walkin-error'));
  try {
    const { customer, claim } = await call(`${storePath()}/customers`, { method: 'POST', body });
    form.reset();
    listAdded(customer);
    showClaim(customer, claim);
    say(`${customer.name} is registered. Stamp them below, and give them the claim code.`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    const field = showProblem(form, error, $('walkin-error'));
    const digits = body.phone.replace(/\D/g, '');
    if (error instanceof ApiError && error.status === 409 && error.field === 'phone' && digits.length >= 4) {
      // The store holds a card for this phone already: list it, to stamp it straight away.
      const found = await call(`${storePath()}/customers?${new URLSearchParams({ phoneEndsWith: digits.slice(-20) })}`)
        .catch(() => null);
      if (found?.customers.length) {
        listCustomers(found.customers);
        // A claim code shown for someone else is not about these customers.
        if (!found.customers.some((c) => c.id === $('claim').dataset.customerId)) show($('claim'), false);
        say(found.customers.length === 1 ? `${found.customers[0].name} already has a card here: listed above, ready to stamp.`
          : 'The cards held for this phone number are listed above, ready to stamp.');
        field?.focus();
      }
    }
  } finally {
    setBusy(button, false);
  }
}

/** Shows a claim code, large, with what to do with it. */
function showClaim(customer, claim) {
  $('claim-for').textContent = `Claim code for ${customer.name} (${customer.login})`;
  $('claim-code').textContent = claim.code;
  $('claim-code').setAttribute('aria-label', `Claim code ${claim.code.split('').join(' ')}`);
  $('claim-help').textContent = `Valid until ${formatTime(claim.expiresAt)}, once. In the app (${location.host}/app) they`
    + ` sign up or sign in with the phone number ${customer.login}, then type this code under “Got a code from a cafe?”:`
    + ' the stamps become theirs.';
  const box = $('claim');
  box.dataset.customerId = customer.id;
  show(box);
  box.classList.remove('flash');
  void box.offsetWidth; // restart the animation
  box.classList.add('flash');
}

/** A new claim code for a walk-in customer (the old one stops working). */
async function newClaimCode(customer, item, button) {
  if (isBusy(button)) return;
  setBusy(button, true);
  itemStatus(item, '');
  try {
    const claim = await call(`${storePath()}/customers/${encodeURIComponent(customer.id)}/claim-code`, { method: 'POST' });
    showClaim(customer, claim);
    itemStatus(item, 'New claim code shown above.');
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      noCardHere(customer, item); // claimed meanwhile: the held card is gone
    } else {
      itemStatus(item, errorText(error), true);
      if (error instanceof ApiError && error.status === 409) { // claimed meanwhile: they have the app now
        customer.walkIn = false;
        updateCustomerItem(item, customer);
      }
    }
    if (error instanceof ApiError && (error.status === 409 || error.status === 404)
      && $('claim').dataset.customerId === customer.id) show($('claim'), false);
  } finally {
    setBusy(button, false);
  }
}

/** Adds stamps to a customer's card here, or takes some off (a negative count, to correct a mistake). */
async function stampCustomer(customer, item, form) {
  const button = form.querySelector('button[type=submit]');
  if (isBusy(button)) return;
  clearProblems(form);
  itemStatus(item, '');
  const count = Number(form.elements.namedItem('count').value);
  setBusy(button, true);
  try {
    const { card } = await call(`${storePath()}/stamps`, { method: 'POST', body: { customerId: customer.id, count } });
    state.customerCards.set(customer.id, card);
    updateCustomerItem(item, customer);
    const what = count > 0 ? `Added ${plural(count, 'stamp')} for` : `Took ${plural(-count, 'stamp')} off the card of`;
    itemStatus(item, `${what} ${customer.name}.`);
    form.elements.namedItem('count').value = '1';
    updateStampButton(form);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) noCardHere(customer, item);
    else if (!(error instanceof ApiError && error.status === 401) && !showProblem(form, error)) {
      itemStatus(item, errorText(error), true);
    }
  } finally {
    setBusy(button, false);
  }
}

/**
 * Marks the row of someone who has no card here (any more) and says what to do: a walk-in's held
 * card goes when they claim it in the app (their stamps are then on their own card, found by phone).
 */
function noCardHere(customer, item) {
  itemStatus(item, customer.walkIn
    ? `The card held for ${customer.login} is not here any more: they have probably claimed it in the app. Find them again by phone.`
    : `${customer.name} has no card here any more: add them again with the member code their phone shows.`, true);
  customer.gone = true;
  updateCustomerItem(item, customer);
}

/** What happened to a row (a customer's or a request's), in words; `bad` marks a failure (with a ⚠, not colour alone). */
function itemStatus(item, text, bad = false) {
  const status = item.querySelector('.item-status');
  status.textContent = text;
  status.classList.toggle('bad', bad);
}

/** The stamp button says what the count will do: add, or (negative) take off. */
function updateStampButton(form) {
  const count = Number(form.elements.namedItem('count').value);
  const button = form.querySelector('button[type=submit]');
  button.textContent = count < 0 ? 'Take off' : 'Add stamps';
  button.setAttribute('aria-label', count < 0 ? `Take off stamps of ${form.dataset.name}` : `Add stamps for ${form.dataset.name}`);
  button.classList.toggle('reject', count < 0);
}

function customerItem(customer) {
  const countId = `stamp-count-${customer.id}`;
  const form = el('form', { class: 'inline stamp-form', dataset: { name: customer.name }, on: {
    submit: (event) => { event.preventDefault(); stampCustomer(latest(customer), item, form); },
    input: () => updateStampButton(form),
  } },
  el('label', { for: countId }, 'Stamps'),
  el('input', { id: countId, name: 'count', type: 'number', min: '-100', max: '100', step: '1', value: '1', required: true,
    class: 'count-input', 'aria-describedby': 'stamp-help', dataset: { testid: 'owner-stamp-count' } }),
  el('button', { type: 'submit', dataset: { testid: 'owner-stamp' } }, 'Add stamps'));
  updateStampButton(form);
  const item = el('li', { class: 'customer', dataset: { customerId: customer.id, testid: 'customer-item' } },
    el('div', { class: 'request-text' },
      el('strong', { class: 'customer-name' }), el('span', { class: 'when customer-login' }),
      el('span', { class: 'card-line' })),
    el('span', { class: 'badge' }),
    el('div', { class: 'actions' }, form,
      el('button', { type: 'button', class: 'quiet claim-button', dataset: { testid: 'new-claim-code' },
        on: { click: (event) => newClaimCode(latest(customer), item, event.currentTarget) } }, 'New claim code')),
    el('p', { class: 'item-status', role: 'status' }));
  updateCustomerItem(item, customer);
  return item;
}

function updateCustomerItem(item, customer) {
  item.querySelector('.customer-name').textContent = customer.name;
  item.querySelector('.customer-login').textContent = ` · ${customer.login}`;
  item.querySelector('.claim-button').setAttribute('aria-label', `New claim code for ${customer.name}`);
  const form = item.querySelector('.stamp-form');
  form.dataset.name = customer.name;
  updateStampButton(form);
  const badge = item.querySelector('.badge');
  badge.dataset.status = customer.gone ? 'gone' : customer.walkIn ? 'walk-in' : 'app';
  badge.textContent = customer.gone ? 'No card here' : customer.walkIn ? 'Walk-in: not claimed yet' : 'Uses the app';
  item.dataset.walkIn = String(customer.walkIn);
  show(item.querySelector('.claim-button'), customer.walkIn && !customer.gone);
  const card = state.customerCards.get(customer.id);
  item.dataset.stamps = card ? String(card.stamps) : '';
  item.querySelector('.card-line').textContent = card
    ? ` · card: ${card.stamps} of ${card.stampsPerReward} stamps${card.rewards ? `, ${plural(card.rewards, 'reward')} ready` : ''}`
    : '';
}

function renderCustomers() {
  reconcile($('customer-list'), state.customers, (c) => c.id, customerItem, updateCustomerItem, $('customers-heading'));
  show($('stamp-help'), state.customers.length > 0);
}

/** The latest we know of a listed customer (a new search may have brought a newer summary). */
const latest = (customer) => state.customers.find((c) => c.id === customer.id) ?? customer;

// ---------------------------------------------------------------------------------------------
// Rendering

/** "3 stamps · 1 reward · 7 visits · since Mar 2026": who this customer is here. */
function cardLine(card) {
  const since = new Date(card.memberSince).toLocaleDateString(undefined, { month: 'short', year: 'numeric' });
  return `${plural(card.stamps, 'stamp')} · ${plural(card.rewards, 'reward')} · ${plural(card.visits, 'visit')} · since ${since}`;
}

function decidedItem(request) {
  const error = state.decisionErrors.get(request.id);
  return el('li', { class: 'request', dataset: { requestId: request.id, status: request.status } },
    el('div', { class: 'request-text' },
      el('strong', { text: request.customerName }), ` · ${describeRequest(request, state.store.rewardItem)}`,
      el('span', { class: 'when' }, ' · ', el('time', { datetime: request.decidedAt, text: formatTime(request.decidedAt) })),
      request.decidedBy ? el('span', { class: 'decided-by', dataset: { testid: 'decided-by' }, text: ` · by ${request.decidedBy.name}` }) : null,
      request.reversedAt ? el('span', { class: 'decided-by', dataset: { testid: 'undone-by' },
        text: ` · undone by ${request.reversedBy?.name ?? 'a member'}` }) : null,
      request.reason ? el('span', { class: 'when', dataset: { testid: 'reject-reason-shown' }, text: ` · “${request.reason}”` }) : null),
    el('span', { class: 'badge', dataset: { status: request.reversedAt ? 'rejected' : request.status },
      text: request.reversedAt ? 'Undone' : STATUS_TEXT[request.status] }),
    undoable(request)
      ? el('button', { type: 'button', class: 'quiet', dataset: { testid: 'undo' },
        'aria-label': `Undo the approval of ${describeRequest(request, state.store.rewardItem)} for ${request.customerName}`,
        on: { click: (event) => undo(request, event.currentTarget) } }, 'Undo')
      : null,
    error ? el('p', { class: 'item-status bad', dataset: { testid: 'request-status' } }, error) : null);
}

/** An approval can be undone for 5 minutes (the server says so too; this only hides the button). */
const UNDO_WINDOW_MS = 5 * 60 * 1000;
function undoable(request) {
  return request.status === 'approved' && !request.reversedAt && Date.now() - Date.parse(request.decidedAt) < UNDO_WINDOW_MS;
}

/** Undoes an approval: a correcting ledger entry on the server; the row says who undid it. */
async function undo(request, button) {
  if (isBusy(button)) return;
  setBusy(button, true);
  state.decisionErrors.delete(request.id);
  try {
    const answer = await call(`/v1/requests/${encodeURIComponent(request.id)}/undo`, { method: 'POST' });
    learn(answer.request);
    say(`Undone: ${describeRequest(answer.request, state.store.rewardItem)} for ${answer.request.customerName}.`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    state.decisionErrors.set(request.id, `Not undone: ${errorText(error)}`);
    if (error instanceof ApiError && error.request) learn(error.request);
  } finally {
    render();
  }
}

/** Updates the page from state.requests (the pending list in place, see reconcile). */
function render() {
  const store = state.store;
  if (!store) return;
  const all = [...state.requests.values()].filter((r) => r.storeId === store.id);
  const pending = all.filter((r) => r.status === 'pending')
    .sort((a, b) => a.createdAt.localeCompare(b.createdAt)); // first come, first served
  queue.render(pending, state.requests);
  $('pending-count').textContent = pending.length ? `(${pending.length})` : '';
  show($('pending-empty'), pending.length === 0);
  if (state.noticed.length > 0 && !state.noticed.some((id) => state.requests.get(id)?.status === 'pending')) show($('notice'), false);

  const decided = all.filter((r) => r.status !== 'pending' && isToday(r.decidedAt))
    .sort((a, b) => b.decidedAt.localeCompare(a.decidedAt));
  $('decided-list').replaceChildren(...decided.slice(0, 50).map(decidedItem));
  show($('decided-empty'), decided.length === 0);

  const approved = decided.filter((r) => r.status === 'approved' && !r.reversedAt);
  $('totals-approved').textContent = approved.length;
  $('totals-rejected').textContent = decided.filter((r) => r.status === 'rejected').length;
  $('totals-stamps').textContent = approved.filter((r) => r.kind === 'stamp').reduce((sum, r) => sum + r.count, 0);
  $('totals-rewards').textContent = approved.filter((r) => r.kind === 'reward').length;

  document.title = `${pending.length ? `(${pending.length}) ` : ''}${store.name} — stampd`;
}

/** The sound toggle: its text and aria-pressed both say whether it is on. */
function showSound() {
  const on = storage.get(soundKey) !== false;
  const button = $('sound-toggle');
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? 'Sound: on' : 'Sound: off';
  // After a reload the browser holds sound back until the page is touched: say so, not beep silently.
  show($('sound-blocked'), on && beeper.supported && !beeper.ready);
}

/** The feed's state: the indicator and banner (common.js), and the queue not clickable while stale. */
function connectionChanged(status, detail, retryAt) {
  showConnection(status, detail, retryAt);
  const stale = status === 'reconnecting';
  if (stale && !queue.stale) $('pending-stale').textContent = `Not current: shown as it was at ${formatTime(new Date().toISOString())}. `
    + 'Decisions wait until the connection is back.';
  queue.setStale(stale);
  queue.moving(() => show($('pending-stale'), stale));
}

/** Alerts outside the page: system notifications (asked for with a tap), and the screen kept on. */
function showAlertChoices() {
  show($('notify-enable'), 'Notification' in window && Notification.permission === 'default');
}

async function keepScreenOn() {
  if (!navigator.wakeLock || document.hidden || !state.store || state.wakeLock) return;
  try {
    state.wakeLock = await navigator.wakeLock.request('screen');
    state.wakeLock.addEventListener('release', () => { state.wakeLock = null; });
  } catch { /* not allowed here (no secure context, battery saver): the screen may sleep */ }
}

// ---------------------------------------------------------------------------------------------
// Start

setupAuthForms(session, signedIn);
$('signout').addEventListener('click', signOut);
$('store-create-form').addEventListener('submit', createStore);
$('join-form').addEventListener('submit', joinStore);
$('invite-submit').addEventListener('click', invite);
$('switch-store').addEventListener('click', async () => {
  storage.remove(storeKey());
  await loadMemberships();
  showSetup();
  (document.querySelector('[data-testid="store-choice"]') ?? $('store-name')).focus();
});
$('sound-toggle').addEventListener('click', () => {
  storage.set(soundKey, storage.get(soundKey) === false);
  showSound();
  if (storage.get(soundKey) !== false) beeper.beep(); // a test beep, so the owner hears it works
});
$('notice').addEventListener('click', () => show($('notice'), false));
for (const tab of document.querySelectorAll('.view-tab')) tab.addEventListener('click', () => showView(tab.dataset.view));
$('sign-open').addEventListener('click', () => showView('sign'));
$('sign-close').addEventListener('click', () => showView('counter'));
$('sign-print').addEventListener('click', () => window.print());
$('find-form').addEventListener('submit', findCustomers);
$('member-form').addEventListener('submit', addByMemberCode);
$('walkin-form').addEventListener('submit', registerWalkIn);
$('empty-member').addEventListener('click', () => $('member-code').focus());
$('empty-walkin').addEventListener('click', (event) => {
  const phone = event.currentTarget.dataset.phone;
  if (phone) $('walkin-phone').value = phone;
  (phone ? $('walkin-name') : $('walkin-phone')).focus();
});
$('claim-hide').addEventListener('click', () => {
  show($('claim'), false);
  $('customers-heading').focus();
});
$('sound-enable').addEventListener('click', () => {
  beeper.unlock(); // the tap itself is the gesture the browser waits for
  say('Sound is on.');
});
$('notify-enable').addEventListener('click', async () => {
  await Notification.requestPermission().catch(() => 'denied');
  showAlertChoices();
});
$('outage-retry').addEventListener('click', () => state.feed?.retryNow());
document.addEventListener('visibilitychange', () => { if (!document.hidden) keepScreenOn(); });
beeper.onChange = showSound;
beeper.unlock(); // running at once where the browser allows it, else held until a tap
showSound();
showAlertChoices();

if (await session.restore()) signedIn();
else show($('auth'));
