// The store's records, for every member: the request history (by customer, status, member and
// date, a page at a time) and the customers (everyone with a card here, and one customer's page
// with their card and its ledger at this store). Read on demand from the API; nothing here is
// kept current by the feed, so each view reads again when it opens.
import {
  $, ApiError, clearProblems, describeRequest, el, errorText, formatDateTime, isBusy, plural, setBusy, show, showProblem,
  STATUS_TEXT,
} from '/assets/common.js';

const PAGE = 25;

const LEDGER_TEXT = {
  stamp_added: 'Stamps from a request', reward_earned: 'Reward earned', reward_used: 'Reward used',
  gift_sent: 'Gift sent', gift_received: 'Gift received', manual_stamp: 'Stamped at the counter', reversal: 'Undone',
};

/** "+2 stamps, +1 reward", "−1 stamp": what a ledger row did to the card. */
function delta(entry) {
  const part = (n, one) => (n === 0 ? null : `${n > 0 ? '+' : '−'}${plural(Math.abs(n), one)}`);
  return [part(entry.stampsDelta, 'stamp'), part(entry.rewardsDelta, 'reward')].filter(Boolean).join(', ') || 'no change';
}

const cardText = (card) => `${plural(card.stamps, 'stamp')} · ${plural(card.rewards, 'reward')} · ${plural(card.visits, 'visit')}`
  + ` · since ${new Date(card.memberSince).toLocaleDateString()}`;

/** Midnight (local) of an <input type=date> value, as an RFC 3339 time; `days` later if given. */
function localMidnight(value, days = 0) {
  const [year, month, day] = value.split('-').map(Number);
  return new Date(year, month - 1, day + days).toISOString();
}

export class Records {
  /**
   * @param call the page's authenticated API call
   * @param rewardItem answers the open store's reward item, for the wording of reward requests
   * @param showView switches the page to one of its views (a customer's page is in "customers")
   */
  constructor(call, rewardItem, showView) {
    this.call = call;
    this.rewardItem = rewardItem;
    this.showView = showView;
    this.store = null;
    this.role = null;
    this.history = { kind: 'requests', query: null, cursor: null };
    this.customers = { cursor: null };
    this.ledger = { customerId: null, cursor: null };
    for (const button of document.querySelectorAll('.history-kinds button')) {
      button.addEventListener('click', () => this.listKind(button.dataset.kind));
    }
    $('history-form').addEventListener('submit', (event) => { event.preventDefault(); this.search(); });
    $('history-more').addEventListener('click', () => this.moreHistory());
    $('customers-more').addEventListener('click', () => this.moreCustomers());
    $('ledger-more').addEventListener('click', () => this.moreLedger());
    $('customer-page-close').addEventListener('click', () => this.closeCustomer());
  }

  /** The store changed (or was opened): forget what was read for the last one. */
  reset(store, role) {
    this.store = store;
    this.role = role;
    this.history = { kind: this.history.kind, query: null, cursor: null };
    this.customers = { cursor: null };
    const form = $('history-form');
    form.reset();
    clearProblems(form, $('history-error'));
    $('history-list').replaceChildren();
    $('history-matches').replaceChildren();
    show($('history-more'), false);
    $('history-summary').textContent = '';
    $('customers-list').replaceChildren();
    show($('customers-more'), false);
    this.closeCustomer();
    show($('history-member-field'), role === 'owner');
  }

  path(tail) { return `/v1/stores/${encodeURIComponent(this.store.id)}${tail}`; }

  // -------------------------------------------------------------------------------------------
  // History

  async openHistory() {
    if (this.role === 'owner') await this.loadMembers();
    await this.search();
  }

  /** Requests, or the rows of the cards (stamps, rewards, gifts, corrections), with the same filters. */
  listKind(kind) {
    this.history.kind = kind;
    for (const button of document.querySelectorAll('.history-kinds button')) {
      button.setAttribute('aria-pressed', String(button.dataset.kind === kind));
    }
    show($('history-status-field'), kind === 'requests');
    $('history-member-label').textContent = kind === 'requests' ? 'Decided by' : 'Made by';
    this.search();
  }

  /** The list's path for a query: requests, or the store's ledger (whose member filter is memberId). */
  historyPath(query) {
    if (this.history.kind === 'requests') return this.path(`/requests?${query}`);
    const ledger = new URLSearchParams(query);
    ledger.delete('status');
    if (ledger.has('decidedBy')) {
      const member = ledger.get('decidedBy');
      ledger.delete('decidedBy');
      if (member !== 'counter-code') ledger.set('memberId', member);
    }
    return this.path(`/ledger?${ledger}`);
  }

  /** The items of one answer, as rows of the list on screen. */
  historyItems(answer) {
    return this.history.kind === 'requests'
      ? answer.requests.map((r) => this.historyItem(r))
      : answer.entries.map((e) => this.historyEntry(e));
  }

  historyEntry({ customer, entry }) {
    const kind = entry.kind === 'manual_stamp' && entry.stampsDelta < 0 ? 'Correction at the counter' : LEDGER_TEXT[entry.kind] ?? entry.kind;
    return el('li', { class: 'request', dataset: { testid: 'history-entry', kind: entry.kind } },
      el('div', { class: 'request-text' },
        el('button', { type: 'button', class: 'link', dataset: { testid: 'history-customer' },
          on: { click: () => this.openCustomer(customer.id) } }, customer.name),
        ` · ${kind}: ${delta(entry)}`,
        entry.counterpart ? ` (${entry.kind === 'gift_sent' ? 'to' : 'from'} ${entry.counterpart})` : '',
        el('span', { class: 'when' }, ' · ', el('time', { datetime: entry.at, text: formatDateTime(entry.at) })),
        entry.member ? el('span', { class: 'decided-by', text: ` · by ${entry.member.name}` }) : null));
  }

  async loadMembers() {
    const select = $('history-member');
    try {
      const { members } = await this.call(this.path('/members'));
      const chosen = select.value;
      select.replaceChildren(el('option', { value: '', text: 'Anyone' }),
        ...members.map((m) => el('option', { value: m.id, text: m.name })), el('option', { value: 'counter-code', text: 'The counter code' }));
      select.value = chosen;
    } catch { /* the filter stays as it was */ }
  }

  /** Reads the first page for the form's filters; a customer typed is found first (by phone ending or name). */
  async search(customerId = null) {
    const form = $('history-form');
    const button = $('history-submit');
    if (isBusy(button) || !this.store) return;
    clearProblems(form, $('history-error'));
    $('history-matches').replaceChildren();
    const data = new FormData(form);
    const query = new URLSearchParams({ limit: String(PAGE) });
    for (const name of ['status', 'decidedBy']) if (data.get(name)) query.set(name, data.get(name));
    if (data.get('from')) query.set('since', localMidnight(data.get('from')));
    if (data.get('to')) query.set('before', localMidnight(data.get('to'), 1));
    setBusy(button, true);
    try {
      const who = String(data.get('customer') ?? '').trim();
      if (customerId) query.set('customerId', customerId);
      else if (who) {
        const found = await this.findCustomers(who);
        if (found.length === 0) throw Object.assign(new Error(`No customer with a card here matches “${who}”.`), { field: 'customer' });
        if (found.length > 1) {
          // Two Danas: say which, and let the tap choose.
          $('history-matches').replaceChildren(el('span', { text: `${found.length} customers match: ` }),
            ...found.map((c) => el('button', { type: 'button', class: 'quiet', dataset: { testid: 'history-match' },
              on: { click: () => this.search(c.id) } }, `${c.name} (${c.login})`)));
          $('history-list').replaceChildren();
          show($('history-more'), false);
          $('history-summary').textContent = '';
          return;
        }
        query.set('customerId', found[0].id);
      }
      this.history.query = query;
      const answer = await this.call(this.historyPath(query));
      const items = this.historyItems(answer);
      $('history-list').replaceChildren(...items);
      this.history.cursor = answer.nextCursor ?? null;
      show($('history-more'), !!answer.nextCursor);
      $('history-summary').textContent = items.length === 0 ? `No ${this.history.kind === 'requests' ? 'requests' : 'entries'} match.`
        : `Newest first${answer.nextCursor ? ', more below' : ''}.`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      showProblem(form, error, $('history-error'), { customerId: 'customer', since: 'from', before: 'to' });
    } finally {
      setBusy(button, false);
    }
  }

  async findCustomers(text) {
    const digits = text.replace(/\D/g, '');
    const phoneLike = /^\+?[\d\s().-]+$/.test(text);
    if (phoneLike && digits.length < 4) throw Object.assign(new Error('Type at least the last 4 digits of the phone number.'), { field: 'customer' });
    const parameters = phoneLike ? { phoneEndsWith: digits.slice(-20) } : { name: text };
    const { customers } = await this.call(this.path(`/customers?${new URLSearchParams(parameters)}`));
    return customers;
  }

  async moreHistory() {
    const button = $('history-more');
    if (isBusy(button) || !this.history.cursor) return;
    setBusy(button, true);
    try {
      const query = new URLSearchParams(this.history.query);
      query.set('cursor', this.history.cursor);
      const answer = await this.call(this.historyPath(query));
      $('history-list').append(...this.historyItems(answer));
      this.history.cursor = answer.nextCursor ?? null;
      show(button, !!answer.nextCursor);
    } catch (error) {
      $('history-error').textContent = errorText(error);
    } finally {
      setBusy(button, false);
    }
  }

  historyItem(request) {
    const status = request.reversedAt ? 'Undone' : STATUS_TEXT[request.status];
    return el('li', { class: 'request', dataset: { testid: 'history-item', requestId: request.id, status: request.status } },
      el('div', { class: 'request-text' },
        el('button', { type: 'button', class: 'link', dataset: { testid: 'history-customer' },
          on: { click: () => this.openCustomer(request.customerId) } }, request.customerName),
        ` · ${describeRequest(request, this.rewardItem())}`,
        el('span', { class: 'when' }, ' · ', el('time', { datetime: request.createdAt, text: formatDateTime(request.createdAt) })),
        request.decidedBy ? el('span', { class: 'decided-by', text: ` · by ${request.decidedBy.name}` }) : null,
        request.reason ? el('span', { class: 'when', text: ` · “${request.reason}”` }) : null),
      el('span', { class: 'badge', dataset: { status: request.reversedAt ? 'rejected' : request.status }, text: status }));
  }

  // -------------------------------------------------------------------------------------------
  // Customers

  async openCustomers() {
    this.customers.cursor = null;
    await this.moreCustomers(true);
  }

  async moreCustomers(first = false) {
    const button = $('customers-more');
    if (isBusy(button) || (!first && !this.customers.cursor)) return;
    setBusy(button, true);
    try {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (!first) query.set('cursor', this.customers.cursor);
      const answer = await this.call(this.path(`/cards?${query}`));
      const items = answer.customers.map((c) => this.customerItem(c));
      if (first) $('customers-list').replaceChildren(...items);
      else $('customers-list').append(...items);
      this.customers.cursor = answer.nextCursor ?? null;
      show(button, !!answer.nextCursor);
      show($('customers-none'), first && answer.customers.length === 0);
      $('customers-error').textContent = '';
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) $('customers-error').textContent = errorText(error);
    } finally {
      setBusy(button, false);
    }
  }

  customerItem({ customer, card, updatedAt }) {
    return el('li', { class: 'customer-row', dataset: { testid: 'customer-row', customerId: customer.id } },
      el('button', { type: 'button', class: 'link', on: { click: () => this.openCustomer(customer.id) } }, customer.name),
      el('span', { class: 'when', text: ` ${customer.login}` }),
      customer.walkIn ? el('span', { class: 'badge', dataset: { status: 'walk-in' }, text: 'Walk-in' }) : null,
      el('span', { class: 'request-card', text: cardText(card) }),
      el('span', { class: 'when', text: `last change ${formatDateTime(updatedAt)}` }));
  }

  /** One customer's page: their card here and its ledger, newest first. */
  async openCustomer(customerId) {
    this.showView('customers');
    this.ledger = { customerId, cursor: null };
    try {
      const page = await this.call(this.path(`/customers/${encodeURIComponent(customerId)}?limit=${PAGE}`));
      $('customer-page-name').textContent = page.customer.name;
      $('customer-page-login').textContent = page.customer.login + (page.customer.walkIn ? ' · walk-in (card held for this phone)' : '');
      $('customer-page-card').textContent = cardText(page.card);
      $('ledger-list').replaceChildren(...page.ledger.map((entry) => this.ledgerItem(entry)));
      this.ledger.cursor = page.nextCursor ?? null;
      show($('ledger-more'), !!page.nextCursor);
      show($('customer-page'));
      $('customer-page-name').focus();
      $('customers-error').textContent = '';
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) $('customers-error').textContent = errorText(error);
    }
  }

  async moreLedger() {
    const button = $('ledger-more');
    if (isBusy(button) || !this.ledger.cursor) return;
    setBusy(button, true);
    try {
      const query = new URLSearchParams({ limit: String(PAGE), cursor: this.ledger.cursor });
      const page = await this.call(this.path(`/customers/${encodeURIComponent(this.ledger.customerId)}?${query}`));
      $('ledger-list').append(...page.ledger.map((entry) => this.ledgerItem(entry)));
      this.ledger.cursor = page.nextCursor ?? null;
      show(button, !!page.nextCursor);
    } catch (error) {
      $('customers-error').textContent = errorText(error);
    } finally {
      setBusy(button, false);
    }
  }

  ledgerItem(entry) {
    const kind = entry.kind === 'manual_stamp' && entry.stampsDelta < 0 ? 'Correction at the counter' : LEDGER_TEXT[entry.kind] ?? entry.kind;
    return el('tr', { dataset: { testid: 'ledger-row', kind: entry.kind } },
      el('td', {}, el('time', { datetime: entry.at, text: formatDateTime(entry.at) })),
      el('td', { text: kind }),
      el('td', { class: 'number', text: delta(entry) }),
      el('td', { text: entry.member?.name ?? '' }));
  }

  closeCustomer() {
    show($('customer-page'), false);
    this.ledger = { customerId: null, cursor: null };
  }
}
