// The customer's page (GET /app): find a cafe, ask for a stamp or a reward, and watch the answer
// arrive live; see the stamp cards and each card's history; give stamps to someone else; claim the
// card a cafe held for the customer's phone (claim code), or show the member code a cafe types in.
//
// State: the cards (GET /v1/cards, then the card carried by each approval or card.updated event)
// and the customer's recent requests. There is no "my requests" endpoint, so the recent ones are kept in
// localStorage and refreshed one by one on load; the events move them from pending to decided.
import {
  $, ApiError, authenticatedCall, say, clearProblems, describeRequest, el, errorText, EventFeed, formatDateTime, formatTime, mergeRequest,
  plural, reconcile, Session, isBusy, setBusy, setupAuthForms, show, showConnection, showProblem, STATUS_TEXT, storage, uuid,
} from '/assets/common.js';

const session = new Session('app', 'customer');
const state = {
  cards: new Map(), requests: new Map(), feed: null, ledgerStore: null, memberTimer: 0,
  asked: new Map(), // request id → the status line next to the button that asked it
  reward: null, // the reward request the "show this to the barista" screen is about
};
const recentKey = () => `stampd.app.recent.${session.account.id}`;
const KEEP_RECENT = 20;

const LEDGER_TEXT = {
  stamp_added: 'Stamps added', reward_earned: 'Reward earned', reward_used: 'Reward used',
  gift_sent: 'Gift sent', gift_received: 'Gift received', manual_stamp: 'Stamps from the cafe', reversal: 'Undone by the cafe',
};

/** Every authenticated call goes through here: a refused token signs the page out. */
const call = authenticatedCall(session, () => sessionEnded());


// ---------------------------------------------------------------------------------------------
// Signing in and out

function signedIn() {
  show($('auth'), false);
  show($('session-bar'));
  show($('customer'));
  $('account-name').textContent = session.account.name;
  say('');
  state.cards = new Map();
  state.requests = new Map();
  state.feed = new EventFeed(session, {
    onEvents, onReset: refreshAll, onStatus: showConnection, onUnauthorized: sessionEnded,
    onMessage: (message) => { if (message.request) learn(message.request); render(); },
  });
  state.feed.start();
  for (const request of storage.get(recentKey()) ?? []) mergeRequest(state.requests, request);
  resetCodes();
  render();
  refreshAll();
  if (!showLinkedStore()) search('');
}

/** The store a counter sign links to (/app#store=<id>): listed alone, ready to ask. */
function linkedStoreId() {
  const match = /^#store=([A-Za-z0-9_-]{1,100})$/.exec(location.hash);
  return match ? match[1] : null;
}

function showLinkedStore() {
  const id = linkedStoreId();
  if (!id) return false;
  const number = ++searches;
  call(`/v1/stores/${encodeURIComponent(id)}`).then((store) => {
    if (number !== searches) return;
    const list = $('search-results');
    list.replaceChildren(storeItem(store));
    list.dataset.query = '';
    show($('search-empty'), false);
    list.querySelector('[data-testid="request-stamp"]').scrollIntoView({ block: 'center' });
    say(`${store.name}: ask for your stamps below.`);
  }, (error) => {
    if (number !== searches) return;
    say(error instanceof ApiError && error.status === 404 ? 'That cafe is not here any more. Find it by its name below.'
      : `Could not open the cafe: ${errorText(error)}`);
    search('');
  });
  return true;
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
  show($('session-bar'), false);
  show($('customer'), false);
  resetCodes();
  show($('auth'));
  $('auth-error').textContent = 'Your session has ended. Please sign in again.';
}

// ---------------------------------------------------------------------------------------------
// Loading and learning

/** The cards, and the current status of every remembered request still pending. */
async function refreshAll() {
  try {
    const { cards } = await call('/v1/cards');
    for (const card of cards) learnCard(card);
    const pending = [...state.requests.values()].filter((r) => r.status === 'pending');
    await Promise.all(pending.map(async (request) => {
      try {
        learn(await call(`/v1/requests/${encodeURIComponent(request.id)}`));
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) state.requests.delete(request.id);
      }
    }));
    render();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) say(`Could not load your cards: ${errorText(error)}`);
  }
}

function learn(request) {
  const changed = mergeRequest(state.requests, request);
  if (changed) {
    const now = state.requests.get(request.id);
    const line = state.asked.get(request.id);
    if (line?.isConnected) showAsk(line, askText(now), now.status === 'rejected' || now.status === 'expired');
    if (state.reward?.id === request.id) showRewardScreen(now);
  }
  if (changed) {
    // Keep the newest few in localStorage, to show them again after a reload.
    const recent = [...state.requests.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt)).slice(0, KEEP_RECENT);
    storage.set(recentKey(), recent);
  }
}

/** A card from the API or an event; the newer one wins, whichever arrives first. */
function learnCard(card) {
  const known = state.cards.get(card.storeId);
  if (known && known.updatedAt > card.updatedAt) return false;
  state.cards.set(card.storeId, card);
  return true;
}

/**
 * What a card.updated event means, in words: "Gia gave you 3 stamps at Bean Cafe." Its data is
 * {card, reason, stamps?, counterpart?}; `before` is the card as the page knew it.
 */
function describeChange({ card, reason, stamps, counterpart }, before) {
  const n = Math.abs(stamps ?? 0);
  let text;
  switch (reason) {
    case 'ownerStamped':
      text = stamps < 0 ? `${card.storeName} took ${plural(n, 'stamp')} off your card (a correction).`
        : `${card.storeName} added ${plural(n, 'stamp')} to your card.`;
      break;
    case 'giftReceived': text = `${counterpart || 'Someone'} gave you ${plural(n, 'stamp')} at ${card.storeName}.`; break;
    case 'giftSent': text = `You gave ${counterpart || 'someone'} ${plural(n, 'stamp')} from your ${card.storeName} card.`; break;
    case 'claimed':
      text = `${card.storeName}: the ${plural(n, 'stamp')} kept for your phone number ${n === 1 ? 'is' : 'are'} on your card now.`;
      break;
    case 'added': text = `${card.storeName} added you: your card there is ready for stamps.`; break;
    case 'stampsPerRewardLowered':
      text = `${card.storeName} now needs only ${plural(card.stampsPerReward, 'stamp')} for a ${card.rewardItem}.`;
      break;
    default: text = `Your ${card.storeName} card changed.`;
  }
  if (card.rewards > (before?.rewards ?? 0)) text += ` A free ${card.rewardItem} is ready!`;
  return text;
}

/** Says a card's news in the status line and on the card itself, until the next news. */
function tell(storeId, text) {
  say(text);
  const note = $('cards').querySelector(`[data-store-id="${storeId}"] .card-note`);
  if (note) note.textContent = text;
}

/** A batch of events from the feed (this tab's poll, or another tab's). */
function onEvents(events, { quiet }) {
  let reloadCards = false;
  const changedCards = [];
  const news = []; // [storeId, text] of card.updated events, told after the render
  for (const event of events) {
    const { request, card } = event.data ?? {};
    if (request) {
      learn(request);
      if (!quiet) say(`${request.storeName}: ${STATUS_TEXT[request.status].toLowerCase()}, ${describeRequest(request)}.`);
    }
    if (card) {
      const before = state.cards.get(card.storeId);
      if (learnCard(card)) changedCards.push(card.storeId);
      if (event.type === 'card.updated' && !quiet) news.push([card.storeId, describeChange(event.data, before)]);
    } else if (event.type === 'card.updated') {
      reloadCards = true; // a card change without the card in it: ask for the cards again
    }
  }
  render();
  for (const storeId of changedCards) {
    $('cards').querySelector(`[data-store-id="${storeId}"]`)?.classList.add('new');
    if (state.ledgerStore === storeId) showLedger(storeId);
  }
  for (const [storeId, text] of news) tell(storeId, text);
  if (news.length > 1) say(news.map(([, text]) => text).join(' '));
  if (reloadCards) refreshAll();
}

// ---------------------------------------------------------------------------------------------
// Asking

/**
 * Asks a store for stamps or a reward. The Idempotency-Key makes a retry after a network error
 * safe: the server answers the first request again instead of making a second one.
 */
async function ask(storeId, kind, count, button, counterCode = '', line = null) {
  const key = uuid();
  const body = kind === 'stamp' ? { kind, count } : { kind };
  // The code the counter shows, as typed: spaces do not matter to the server.
  if (kind === 'stamp' && counterCode.trim()) body.counterCode = counterCode.replace(/\s/g, '');
  if (isBusy(button)) return;
  setBusy(button, true);
  say('Sending your request…');
  if (line) showAsk(line, 'Sending…');
  try {
    let request;
    for (let attempt = 1; ; attempt += 1) {
      try {
        request = await call(`/v1/stores/${encodeURIComponent(storeId)}/requests`,
          { method: 'POST', body, headers: { 'Idempotency-Key': key } });
        break;
      } catch (error) {
        const retryable = error instanceof TypeError || (error instanceof ApiError && error.status >= 500);
        if (!retryable || attempt === 3) throw error;
        await new Promise((resolve) => { setTimeout(resolve, 1000 * attempt); });
      }
    }
    if (line) state.asked.set(request.id, line);
    if (kind === 'reward') state.reward = request;
    learn(request);
    if (line) showAsk(line, askText(request));
    if (kind === 'reward') showRewardScreen(request);
    state.feed.post({ request }); // other tabs get no event for it: tell them
    render();
    say(request.status === 'approved'
      ? `${request.storeName} approved ${describeRequest(request)} at the counter.`
      : `Asked ${request.storeName} for ${describeRequest(request)}${request.atCounter ? ' at the counter' : ''}. Waiting for the cafe…`);
  } catch (error) {
    say(`Not sent: ${errorText(error)}`);
    if (line) showAsk(line, `Not sent: ${errorText(error)}`, true);
  } finally {
    setBusy(button, false);
  }
}

/** Where an ask stands, in the words the line next to its button uses. */
function askText(request) {
  const what = describeRequest(request, state.cards.get(request.storeId)?.rewardItem);
  switch (request.status) {
    case 'pending': return `Sent: ${what}, waiting for ${request.storeName}…`;
    case 'approved': return `Approved: ${what}.`;
    case 'rejected': return `Not approved${request.reason ? `: ${request.reason}` : ''}.`;
    case 'expired': return 'Expired: nobody at the counter answered in time. Ask again when you are there.';
    case 'cancelled': return 'Cancelled.';
    default: return STATUS_TEXT[request.status] ?? '';
  }
}

function showAsk(line, text, bad = false) {
  line.textContent = text;
  line.classList.toggle('bad', bad);
}

// ---------------------------------------------------------------------------------------------
// The reward screen: big, for the barista to read off the phone, while the reward is asked for.

function showRewardScreen(request) {
  const screen = $('reward-screen');
  const item = state.cards.get(request.storeId)?.rewardItem ?? 'your reward';
  screen.dataset.status = request.status;
  $('reward-store').textContent = request.storeName;
  $('reward-item').textContent = item;
  $('reward-state').textContent = {
    pending: 'Show this to the barista: they confirm it on their screen.',
    approved: `Enjoy your ${item}!`,
    rejected: `Not confirmed${request.reason ? `: ${request.reason}` : ''}. The reward stays on your card.`,
    expired: 'Nobody confirmed it in time. The reward stays on your card.',
    cancelled: 'Cancelled. The reward stays on your card.',
  }[request.status] ?? '';
  $('reward-heading').textContent = request.status === 'approved' ? 'Reward given' : 'Reward ready';
  const opening = screen.hidden;
  show(screen);
  if (opening) $('reward-close').focus();
}

function closeRewardScreen() {
  show($('reward-screen'), false);
  state.reward = null;
}

async function cancel(request, button) {
  if (isBusy(button)) return;
  setBusy(button, true);
  try {
    const answer = await call(`/v1/requests/${encodeURIComponent(request.id)}`, { method: 'DELETE' });
    learn(answer.request);
    state.feed.post({ request: answer.request });
    say(`Cancelled your request to ${request.storeName}.`);
    render();
  } catch (error) {
    say(errorText(error));
    setBusy(button, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Giving stamps: from one of the customer's cards to another customer, by their login.

/** Opens or closes a card's gift form. */
function toggleGift(item, open) {
  const form = item.querySelector('.gift');
  const toggle = item.querySelector('.give');
  show(form, open);
  toggle.setAttribute('aria-expanded', String(open));
  if (open) {
    form.elements.namedItem('to').focus();
  } else {
    clearProblems(form, form.querySelector('.form-error'));
    resetGiftConfirmation(form);
    show(toggle, (state.cards.get(item.dataset.storeId)?.stamps ?? 0) > 0);
    (toggle.hidden ? item.querySelector('button') : toggle).focus();
  }
}

/**
 * Gives stamps. The Idempotency-Key stays the same while the form sends the same gift again
 * after a network error (so a gift that did go through is not given twice); any answer from the
 * server, or a changed gift, starts a new key.
 */
async function give(card, form, button) {
  if (isBusy(button)) return;
  const data = new FormData(form);
  const body = { to: data.get('to').trim(), count: Number(data.get('count')) };
  // First the sentence of what will happen; the gift goes on the second, deliberate tap.
  const confirmation = form.querySelector('.gift-confirm');
  if (form.dataset.confirmed !== JSON.stringify(body)) {
    if (!body.to || !Number.isInteger(body.count) || body.count < 1) { form.reportValidity(); return; }
    form.dataset.confirmed = JSON.stringify(body);
    confirmation.textContent = `Give ${plural(body.count, 'stamp')} to ${body.to}? This cannot be undone.`;
    button.textContent = `Yes, give ${plural(body.count, 'stamp')}`;
    return;
  }
  const fingerprint = JSON.stringify(body);
  if (form.dataset.fingerprint !== fingerprint) {
    form.dataset.fingerprint = fingerprint;
    form.dataset.key = uuid();
  }
  const formError = form.querySelector('.form-error');
  clearProblems(form, formError);
  setBusy(button, true);
  try {
    let gift;
    for (let attempt = 1; ; attempt += 1) {
      try {
        gift = await call(`/v1/cards/${encodeURIComponent(card.storeId)}/gifts`,
          { method: 'POST', body, headers: { 'Idempotency-Key': form.dataset.key } });
        break;
      } catch (error) {
        const retryable = error instanceof TypeError || (error instanceof ApiError && error.status >= 500);
        if (!retryable || attempt === 3) throw error;
        await new Promise((resolve) => { setTimeout(resolve, 1000 * attempt); });
      }
    }
    delete form.dataset.fingerprint;
    resetGiftConfirmation(form);
    learnCard(gift.card);
    render();
    const item = form.closest('.card');
    form.reset();
    toggleGift(item, false);
    tell(card.storeId, `You gave ${gift.toName} ${plural(gift.count, 'stamp')} from your ${gift.card.storeName} card.`);
  } catch (error) {
    if (error instanceof ApiError) delete form.dataset.fingerprint; // answered: a new try is a new gift
    if (!(error instanceof ApiError && error.status === 401)) showProblem(form, error, formError);
  } finally {
    setBusy(button, false);
  }
}

function resetGiftConfirmation(form) {
  delete form.dataset.confirmed;
  form.querySelector('.gift-confirm').textContent = '';
  form.querySelector('[data-testid="gift-submit"]').textContent = 'Give';
}

function giftForm(card) {
  const id = (name) => `gift-${name}-${card.storeId}`;
  const button = el('button', { type: 'submit', dataset: { testid: 'gift-submit' } }, 'Give');
  const form = el('form', { id: id('form'), class: 'gift', hidden: true, dataset: { testid: 'gift-form' },
    'aria-label': `Give stamps from the ${card.storeName} card`,
    on: { submit: (event) => { event.preventDefault(); give(state.cards.get(card.storeId) ?? card, form, button); } } },
  el('h4', {}, 'Give stamps to someone'),
  el('label', { for: id('to') }, 'Their phone or e-mail ', el('span', { class: 'hint' }, '(as they sign in to stampd)')),
  el('input', { id: id('to'), name: 'to', autocomplete: 'off', spellcheck: 'false', required: true, dataset: { testid: 'gift-to' } }),
  el('label', { for: id('count') }, 'Stamps'),
  el('input', { id: id('count'), name: 'count', type: 'number', inputmode: 'numeric', min: '1', value: '1', required: true,
    class: 'count-input', dataset: { testid: 'gift-count' } }),
  el('p', { class: 'gift-confirm', role: 'status', dataset: { testid: 'gift-confirm' } }),
  el('div', { class: 'inline form-actions' }, button,
    el('button', { type: 'button', class: 'quiet', on: { click: () => toggleGift(form.closest('.card'), false) } }, 'Cancel')),
  el('p', { class: 'error form-error', role: 'alert' }));
  // A changed gift is a new question: the sentence goes until it is asked again.
  form.addEventListener('input', () => resetGiftConfirmation(form));
  return form;
}

// ---------------------------------------------------------------------------------------------
// Codes for the counter: a claim code takes over the card a cafe held for the customer's phone
// number; a member code (8 digits, 10 minutes) lets a cafe add the customer.

/** Clears the claim form and hides the member code (signing in or out: it was someone else's). */
function resetCodes() {
  const form = $('claim-form');
  form.reset();
  clearProblems(form, $('claim-error'));
  $('claim-done').textContent = '';
  hideMemberCode(false);
  $('member-error').textContent = '';
}

/** Claims the card a cafe held for this customer's phone number: its stamps join the customer's card there. */
async function claim(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = $('claim-submit');
  if (isBusy(button)) return;
  const code = $('claim-input').value.replace(/[\s-]/g, '');
  clearProblems(form, $('claim-error'));
  $('claim-done').textContent = '';
  if (!code) return;
  setBusy(button, true);
  try {
    const { card } = await call('/v1/me/claims', { method: 'POST', body: { code } });
    form.reset();
    learnCard(card);
    render();
    const rewards = card.rewards ? `, and ${plural(card.rewards, 'reward')} ready (${card.rewardItem})` : '';
    const text = `Claimed: your ${card.storeName} card now has ${card.stamps} of ${card.stampsPerReward} stamps${rewards}.`;
    $('claim-done').textContent = text;
    tell(card.storeId, text);
    $('cards').querySelector(`[data-store-id="${card.storeId}"]`)?.classList.add('new');
    refreshAll(); // the other cards too, in case the claim changed more than the answer says
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showProblem(form, error, $('claim-error'));
  } finally {
    setBusy(button, false);
  }
}

/** Asks for a member code (a new one replaces the old) and shows it large, with when it expires. */
async function showMemberCode() {
  const button = $('member-show');
  if (isBusy(button)) return;
  setBusy(button, true);
  $('member-error').textContent = '';
  try {
    const { code, expiresAt } = await call('/v1/me/member-code', { method: 'POST' });
    const node = $('member-code');
    // Shown in two groups of 4, easier to read out; the cafe may type it with or without the space.
    node.textContent = `${code.slice(0, 4)} ${code.slice(4)}`;
    node.setAttribute('aria-label', `Member code ${code.split('').join(' ')}`);
    node.classList.remove('expired');
    const minutes = Math.max(1, Math.round((new Date(expiresAt) - Date.now()) / 60_000));
    $('member-expiry').textContent = `Valid until ${formatTime(expiresAt)} (${plural(minutes, 'minute')}). `
      + 'Show it to the cafe: they type it in to add you.';
    const box = $('member-box');
    box.dataset.expiresAt = expiresAt;
    show(box);
    button.textContent = 'Show a new member code';
    clearTimeout(state.memberTimer);
    state.memberTimer = setTimeout(memberCodeExpired, Math.max(0, new Date(expiresAt) - Date.now()));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) $('member-error').textContent = errorText(error);
  } finally {
    setBusy(button, false);
  }
}

function memberCodeExpired() {
  $('member-code').classList.add('expired');
  $('member-expiry').textContent = 'This code has expired: show a new one if the cafe still needs it.';
}

function hideMemberCode(focus = true) {
  clearTimeout(state.memberTimer);
  show($('member-box'), false);
  $('member-code').textContent = '';
  $('member-show').textContent = 'Show my member code';
  if (focus) $('member-show').focus();
}

// ---------------------------------------------------------------------------------------------
// Search

let searches = 0;

/** Searches the stores; only the latest search's answer is shown (answers can cross). */
async function search(query) {
  const list = $('search-results');
  const number = ++searches;
  list.setAttribute('aria-busy', 'true');
  try {
    const { stores } = await call(`/v1/stores?${new URLSearchParams({ q: query, limit: '20' })}`);
    if (number !== searches) return;
    list.replaceChildren(...stores.map(storeItem));
    list.dataset.query = query; // what the list shows the answer to
    show($('search-empty'), stores.length === 0);
  } catch (error) {
    if (number === searches) say(`Search failed: ${errorText(error)}`);
  } finally {
    if (number === searches) list.removeAttribute('aria-busy');
  }
}

function storeItem(store) {
  const countId = `count-${store.id}`;
  const count = el('select', { id: countId, dataset: { testid: 'stamp-count' } },
    ...Array.from({ length: 10 }, (_, i) => el('option', { value: String(i + 1), text: String(i + 1) })));
  const button = el('button', { type: 'submit', dataset: { testid: 'request-stamp' } }, 'Ask for stamps');
  const codeId = `code-${store.id}`;
  const required = store.rules?.requireCounterCode === true;
  const code = el('input', { id: codeId, class: 'code-input', inputmode: 'numeric', autocomplete: 'off', maxlength: '7',
    placeholder: '123 456', dataset: { testid: 'counter-code-input' }, ...(required ? { required: true } : {}) });
  const line = el('p', { class: 'ask-status', role: 'status', dataset: { testid: 'ask-status' } });
  const form = el('form', { class: 'inline ask', on: { submit: (event) => {
    event.preventDefault();
    ask(store.id, 'stamp', Number(count.value), button, code.value, line);
  } } }, el('label', { for: countId }, 'Stamps'), count,
  el('label', { for: codeId }, required ? 'Counter code' : 'Counter code (optional)'), code, button);
  return el('li', { class: 'store', dataset: { storeId: store.id, testid: 'store-result' } },
    el('h3', { text: store.name }),
    el('p', { class: 'store-meta' }, `${plural(store.stampsPerReward, 'stamp')} → ${store.rewardItem}`,
      store.address ? ` · ${store.address}` : '', store.openHours ? ` · ${store.openHours}` : ''),
    form, line);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function requestItem(request) {
  const item = el('li', { class: 'request', dataset: { requestId: request.id, testid: 'my-request' } },
    el('div', { class: 'request-text' },
      el('strong', { text: request.storeName }), ' · ', el('span', { class: 'what' }),
      el('span', { class: 'when' }, ' · ', el('time', { datetime: request.createdAt, text: formatTime(request.createdAt) }))),
    el('span', { class: 'badge' }),
    el('div', { class: 'actions' },
      el('button', { type: 'button', class: 'quiet cancel', dataset: { testid: 'cancel' },
        'aria-label': `Cancel the request to ${request.storeName}`,
        on: { click: (event) => cancel(request, event.currentTarget) } }, 'Cancel'),
      el('button', { type: 'button', class: 'quiet again', hidden: true, dataset: { testid: 'ask-again' },
        'aria-label': `Ask ${request.storeName} again for ${describeRequest(request)}`,
        on: { click: (event) => ask(request.storeId, request.kind, request.count, event.currentTarget, '',
          item.querySelector('.ask-status')) } }, 'Ask again')),
    el('p', { class: 'ask-status', role: 'status', dataset: { testid: 'ask-status' } }));
  updateRequestItem(item, request);
  return item;
}

function updateRequestItem(item, request) {
  item.dataset.status = request.status;
  const reason = request.reason ? ` (${request.reason})` : '';
  item.querySelector('.what').textContent = describeRequest(request, state.cards.get(request.storeId)?.rewardItem);
  const badge = item.querySelector('.badge');
  badge.dataset.status = request.status;
  badge.textContent = request.status === 'pending' ? 'Pending: waiting for the cafe' : STATUS_TEXT[request.status] + reason;
  show(item.querySelector('.again'), request.status === 'expired');
  const cancelButton = item.querySelector('.cancel');
  if (request.status !== 'pending' && cancelButton) {
    if (cancelButton.contains(document.activeElement)) $('requests-heading').focus();
    cancelButton.remove();
  }
}

function cardItem(card) {
  const gift = giftForm(card);
  const item = el('li', { class: 'card', dataset: { storeId: card.storeId, testid: 'card' } },
    el('h3', { text: card.storeName }),
    el('p', { class: 'card-progress' }),
    el('p', { class: 'stamps', 'aria-hidden': 'true' }),
    el('progress', { class: 'bar' }),
    el('p', { class: 'card-rewards' }),
    el('p', { class: 'card-note', role: 'status', dataset: { testid: 'card-note' } }),
    el('div', { class: 'actions' },
      el('button', { type: 'button', dataset: { testid: 'card-ask' }, 'aria-label': `Ask ${card.storeName} for a stamp`,
        on: { click: (event) => ask(card.storeId, 'stamp', 1, event.currentTarget, '', item.querySelector('.ask-status')) } },
      'Ask for a stamp'),
      el('button', { type: 'button', class: 'use-reward', dataset: { testid: 'use-reward' },
        'aria-label': `Use a reward at ${card.storeName}`,
        on: { click: (event) => ask(card.storeId, 'reward', 1, event.currentTarget, '', item.querySelector('.ask-status')) } },
      'Use a reward'),
      el('button', { type: 'button', class: 'quiet give', dataset: { testid: 'give-stamps' }, 'aria-expanded': 'false',
        'aria-controls': gift.id, 'aria-label': `Give stamps from the ${card.storeName} card`,
        on: { click: () => toggleGift(item, gift.hidden) } }, 'Give stamps'),
      el('button', { type: 'button', class: 'quiet', dataset: { testid: 'show-ledger' },
        'aria-label': `History of the ${card.storeName} card`, on: { click: () => showLedger(card.storeId) } }, 'History')),
    el('p', { class: 'ask-status', role: 'status', dataset: { testid: 'ask-status' } }),
    gift);
  updateCardItem(item, card);
  return item;
}

function updateCardItem(item, card) {
  item.dataset.stamps = card.stamps;
  item.dataset.rewards = card.rewards;
  item.querySelector('.card-progress').textContent = `${card.stamps} of ${card.stampsPerReward} stamps`;
  // One mark per stamp: filled ● and empty ○, so progress is not shown by colour alone.
  item.querySelector('.stamps').replaceChildren(...Array.from({ length: card.stampsPerReward },
    (_, i) => el('span', { class: i < card.stamps ? 'stamp filled' : 'stamp', text: i < card.stamps ? '●' : '○' })));
  const bar = item.querySelector('progress');
  bar.max = card.stampsPerReward;
  bar.value = card.stamps;
  bar.setAttribute('aria-label', `${card.stamps} of ${card.stampsPerReward} stamps towards ${card.rewardItem}`);
  item.querySelector('.card-rewards').textContent = card.rewards > 0
    ? `${plural(card.rewards, 'reward')} ready: ${card.rewardItem}`
    : `${card.stampsPerReward - card.stamps} more for a free ${card.rewardItem}`;
  show(item.querySelector('.use-reward'), card.rewards > 0);
  // Stamps can be given while the card has some; an open form stays open (the server has the last word).
  const gift = item.querySelector('.gift');
  show(item.querySelector('.give'), card.stamps > 0 || !gift.hidden);
  gift.elements.namedItem('count').max = String(Math.max(1, card.stamps));
}

function render() {
  const requests = [...state.requests.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt)).slice(0, 10);
  reconcile($('my-requests'), requests, (r) => r.id, requestItem, updateRequestItem, $('requests-heading'));
  show($('requests-empty'), requests.length === 0);
  const cards = [...state.cards.values()].sort((a, b) => a.storeName.localeCompare(b.storeName));
  reconcile($('cards'), cards, (c) => c.storeId, cardItem, updateCardItem, $('cards-heading'));
  show($('cards-empty'), cards.length === 0);
}

async function showLedger(storeId) {
  const card = state.cards.get(storeId);
  try {
    const { entries } = await call(`/v1/cards/${encodeURIComponent(storeId)}/ledger`);
    const opening = state.ledgerStore !== storeId;
    state.ledgerStore = storeId;
    $('ledger-title').textContent = `History: ${card?.storeName ?? 'card'}`;
    const signed = (n) => (n > 0 ? `+${n}` : String(n));
    // Newest first; a gift names the other person.
    const what = (entry) => {
      if (entry.kind === 'manual_stamp' && entry.stampsDelta < 0) return 'Correction by the cafe';
      if (entry.kind === 'gift_sent' && entry.counterpart) return `Gift to ${entry.counterpart}`;
      if (entry.kind === 'gift_received' && entry.counterpart) return `Gift from ${entry.counterpart}`;
      return LEDGER_TEXT[entry.kind] ?? entry.kind;
    };
    $('ledger-rows').replaceChildren(...[...entries].reverse().map((entry) => el('tr', { dataset: { testid: 'my-ledger-row', kind: entry.kind } },
      el('td', {}, el('time', { datetime: entry.at, text: formatDateTime(entry.at) })),
      el('td', { text: what(entry) }),
      el('td', { text: entry.stampsDelta ? signed(entry.stampsDelta) : '' }),
      el('td', { text: entry.rewardsDelta ? signed(entry.rewardsDelta) : '' }))));
    show($('ledger'), entries.length > 0);
    show($('ledger-empty'), entries.length === 0);
    show($('ledger-panel'));
    if (opening) $('ledger-title').focus();
  } catch (error) {
    say(`Could not load the history: ${errorText(error)}`);
  }
}

function closeLedger() {
  const storeId = state.ledgerStore;
  state.ledgerStore = null;
  show($('ledger-panel'), false);
  $('cards').querySelector(`[data-store-id="${storeId}"] [data-testid="show-ledger"]`)?.focus();
}

// ---------------------------------------------------------------------------------------------
// Start

setupAuthForms(session, signedIn);
$('signout').addEventListener('click', signOut);
$('search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  search($('search-q').value.trim());
});
$('ledger-close').addEventListener('click', closeLedger);
$('reward-close').addEventListener('click', closeRewardScreen);
$('claim-form').addEventListener('submit', claim);
$('member-show').addEventListener('click', showMemberCode);
$('member-hide').addEventListener('click', () => hideMemberCode());

window.addEventListener('hashchange', () => { if (session.token) showLinkedStore(); });
if (await session.restore()) signedIn();
else show($('auth'));
