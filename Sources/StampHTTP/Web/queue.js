// The store's queue of pending requests, built for a rush at the counter.
//
// - One row per customer: three requests from Dana are one row with a count, each request a line
//   of its own (stamps and rewards look different), with a countdown to its expiry.
// - Nothing slides under a finger: a request decided here or on another device stays where it is
//   for a few seconds, as a line that says what happened (with Undo for an approval), and a row
//   that did move ignores taps for half a second ("The list moved: tap again").
// - Decisions are deliberate: a large stamp count asks to confirm with a second tap, a held key
//   does not repeat a decision, and the A and R keys decide the focused line, once per press.
//
// The page owns the requests (owner.js); the queue draws them and calls back for decisions.
import { el, describeRequest, formatTime, plural, reconcile, STATUS_TEXT } from '/assets/common.js';

/** How long a decided line stays in place. */
export const KEEP_DECIDED_MS = 6_000;
/** Reasons a member picks when rejecting; the customer reads them. */
const STAMP_REASONS = ['This visit was stamped already', 'Please order first', 'Please ask at the counter'];
const REWARD_REASONS = ['The reward is not available right now', 'Please ask at the counter'];

/** How long a row that moved ignores taps. */
export const SETTLE_MS = 500;
/** A stamp request for this many stamps or more asks to confirm its approval. */
export const LARGE_STAMP_COUNT = 4;
/** How long the confirming second tap may take. */
const CONFIRM_MS = 4_000;
/** The last minutes of a request's life are marked "expiring soon". */
const SOON_MS = 2 * 60_000;

export class Queue {
  /**
   * list: the <ul> the rows go in; heading: where focus goes when the focused row leaves;
   * actions: { decide(request, action, line), undo(request, button), cardLine(card), rewardItem(),
   * redraw() (a decided line's time in place is up), errors (a Map: request id → why its last
   * decision failed, shown on its line) }.
   */
  constructor(list, heading, actions) {
    this.list = list;
    this.heading = heading;
    this.actions = actions;
    this.kept = new Map(); // request id → { request, until }: decided lines still in place
    this.shown = new Map(); // request id → the request as last drawn
    this.errors = actions.errors; // request id → why its last decision failed
    this.stale = false;
    this.timer = setInterval(() => this.tick(), 1000);
    list.addEventListener('keydown', (event) => this.key(event));
  }

  /** Draws `pending` (the store's pending requests) and, in place, what was decided since. */
  render(pending, all) {
    const now = Date.now();
    const pendingIds = new Set(pending.map((r) => r.id));
    // What was on screen as pending and is not any more stays a while, as what it became.
    for (const [id, shown] of this.shown) {
      if (pendingIds.has(id) || this.kept.has(id) || shown.status !== 'pending') continue;
      const became = all.get(id) ?? { ...shown, status: 'expired' };
      this.kept.set(id, { request: became, until: now + KEEP_DECIDED_MS });
    }
    for (const [id, kept] of this.kept) {
      if (kept.until <= now || pendingIds.has(id)) this.kept.delete(id);
      else kept.request = all.get(id) ?? kept.request;
    }
    const lines = [...pending, ...[...this.kept.values()].map((k) => k.request)]
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    const groups = new Map();
    for (const request of lines) {
      if (!groups.has(request.customerId)) groups.set(request.customerId, { customerId: request.customerId, lines: [] });
      groups.get(request.customerId).lines.push(request);
    }
    this.shown = new Map(lines.map((r) => [r.id, r]));

    this.moving(() => reconcile(this.list, [...groups.values()], (g) => g.customerId, (g) => this.groupRow(g),
      (row, g) => this.updateGroup(row, g), this.heading));
    this.tick();
  }

  /** Runs `change` (to the queue, or to the page above it) and marks the lines it moved. */
  moving(change) {
    const before = this.positions();
    change();
    const moved = String(performance.now());
    for (const [id, top] of this.positions()) {
      if (before.has(id) && before.get(id) !== top) this.lineNode(id).dataset.movedAt = moved;
    }
  }

  /** Where each line is on screen, to see which ones a change moved. */
  positions() {
    return new Map([...this.list.querySelectorAll('.line')].map((node) => [node.dataset.requestId, node.getBoundingClientRect().top]));
  }

  lineNode(id) { return this.list.querySelector(`.line[data-request-id="${CSS.escape(id)}"]`); }

  groupRow(group) {
    const row = el('li', { class: 'group', dataset: { testid: 'request-group', customerId: group.customerId } },
      el('div', { class: 'group-head' },
        el('strong', { class: 'group-name' }),
        el('span', { class: 'group-count', dataset: { testid: 'group-count' } }),
        el('span', { class: 'request-card', dataset: { testid: 'customer-card' } })),
      el('ul', { class: 'lines' }));
    this.updateGroup(row, group);
    return row;
  }

  updateGroup(row, group) {
    const first = group.lines[0];
    const waiting = group.lines.filter((r) => r.status === 'pending');
    row.querySelector('.group-name').textContent = first.customerName;
    const count = row.querySelector('.group-count');
    count.textContent = waiting.length > 1 ? plural(waiting.length, 'request') : '';
    row.dataset.count = String(waiting.length);
    const card = [...group.lines].reverse().find((r) => r.customerCard)?.customerCard;
    // Always a line (so the row keeps its height when the first approval makes the card).
    row.querySelector('.request-card').textContent = card ? this.actions.cardLine(card) : 'New here: no card yet';
    reconcile(row.querySelector('.lines'), group.lines, (r) => r.id, (r) => this.line(r), (node, r) => this.updateLine(node, r),
      this.heading);
  }

  line(request) {
    const node = el('li', { class: 'request line', tabindex: '-1', dataset: { requestId: request.id } });
    this.updateLine(node, request);
    return node;
  }

  /** A line is either pending (buttons) or decided in place (what happened, Undo). */
  updateLine(node, request) {
    const state = request.status === 'pending' ? 'pending' : `${request.status}${request.reversedAt ? '-undone' : ''}`;
    if (node.dataset.drawn === state) { this.updateStatus(node, request); return; }
    const hadFocus = node.contains(document.activeElement);
    // A line decided in place never gets shorter while it stays (decided, then undone), so that
    // the lines below stay where they were until it goes.
    if (node.dataset.drawn) node.style.minHeight = state === 'pending' ? '' : `${node.getBoundingClientRect().height}px`;
    node.dataset.drawn = state;
    node.dataset.drawnAt = String(performance.now());
    node.dataset.status = request.status;
    node.dataset.kind = request.kind;
    node.dataset.testid = request.status === 'pending' ? 'request-item' : 'decided-in-place';
    node.classList.toggle('reward', request.kind === 'reward');
    node.classList.toggle('settled', request.status !== 'pending');
    const parts = request.status === 'pending' ? this.pendingParts(node, request) : this.decidedParts(request);
    node.replaceChildren(...parts.filter(Boolean)); // replaceChildren would write a null as "null"
    if (hadFocus) (node.querySelector('button') ?? node).focus();
    this.updateStatus(node, request);
  }

  pendingParts(node, request) {
    const what = describeRequest(request, this.actions.rewardItem());
    const who = request.customerName;
    return [
      // What it asks and how long it waits, short enough to share one row with the buttons; when
      // it was asked is in the tooltip (the countdown says as much at a glance).
      el('div', { class: 'request-text', title: `Asked at ${formatTime(request.createdAt)}` },
        el('span', { class: 'kind', text: request.kind === 'reward' ? `★ Reward: ${this.actions.rewardItem()}` : `● ${plural(request.count, 'stamp')}` }),
        el('span', { class: 'when' }, ' · '),
        el('span', { class: 'expiry', dataset: { testid: 'expiry' } })),
      request.atCounter
        ? el('span', { class: 'badge', dataset: { status: 'counter', testid: 'at-counter' }, text: 'At the counter' })
        : el('span', { class: 'badge', dataset: { status: 'pending' }, text: STATUS_TEXT.pending }),
      el('div', { class: 'actions' }, ...this.decisionButtons(node, request)),
      el('p', { class: 'item-status', dataset: { testid: 'request-status' } }),
    ];
  }

  decisionButtons(node, request) {
    const what = describeRequest(request, this.actions.rewardItem());
    const who = request.customerName;
    return [
      el('button', { type: 'button', class: 'approve', dataset: { testid: 'approve' }, 'aria-label': `Approve ${what} for ${who}`,
        on: { click: (event) => this.tap(node, request, 'approve', event.currentTarget) } }, 'Approve'),
      el('button', { type: 'button', class: 'reject', dataset: { testid: 'reject' }, 'aria-label': `Reject ${what} for ${who}`,
        on: { click: (event) => this.tap(node, request, 'reject', event.currentTarget) } }, 'Reject'),
    ];
  }

  /**
   * Reject asks why, in the line's own place (a list of reasons the customer will read, a
   * confirming Reject and Keep), so that the line keeps its height; the reason is optional.
   */
  askReason(node, request) {
    const what = describeRequest(request, this.actions.rewardItem());
    const id = `reason-${request.id}`;
    const reasons = request.kind === 'reward' ? REWARD_REASONS : STAMP_REASONS;
    const select = el('select', { id, dataset: { testid: 'reject-reason' }, 'aria-label': `Why reject ${what} for ${request.customerName}` },
      el('option', { value: '', text: 'No reason given' }), ...reasons.map((text) => el('option', { value: text, text })));
    const confirm = el('button', { type: 'button', class: 'reject', dataset: { testid: 'reject-confirm' },
      on: { click: async () => {
        if (performance.now() < Number(confirm.dataset.confirmFrom)) return; // the double tap that opened it
        await this.actions.decide(request, 'reject', node, select.value || null);
        if (node.isConnected && node.dataset.drawn === 'pending') this.keep(node, request);
      } } }, 'Reject');
    confirm.dataset.confirmFrom = String(performance.now() + 400);
    const keep = el('button', { type: 'button', class: 'quiet', dataset: { testid: 'reject-cancel' },
      on: { click: () => this.keep(node, request) } }, 'Keep');
    // The choice takes the whole line (the group's row above still names the customer), at
    // least as tall as the line was.
    node.style.minHeight = `${node.getBoundingClientRect().height}px`;
    node.classList.add('asking');
    node.querySelector('.actions').replaceChildren(select, confirm, keep);
    select.focus();
  }

  /** Back from asking why to the line's two buttons. */
  keep(node, request) {
    const hadFocus = node.contains(document.activeElement);
    node.classList.remove('asking');
    node.querySelector('.actions').replaceChildren(...this.decisionButtons(node, request));
    node.style.minHeight = '';
    if (hadFocus) node.querySelector('[data-testid="reject"]').focus();
  }

  decidedParts(request) {
    const what = describeRequest(request, this.actions.rewardItem());
    const by = request.decidedBy ? ` by ${request.decidedBy.name}` : '';
    const text = request.reversedAt ? `Undone: ${what}` : `${STATUS_TEXT[request.status]}${by}: ${what}`;
    const undo = request.status === 'approved' && !request.reversedAt
      ? el('button', { type: 'button', class: 'quiet', dataset: { testid: 'undo-in-place' },
        'aria-label': `Undo the approval of ${what} for ${request.customerName}`,
        on: { click: (event) => this.undoTap(request, event.currentTarget) } }, 'Undo')
      : null;
    // No badge: the text says what happened, and one row of text and Undo fits where the
    // request's line was.
    return [
      el('div', { class: 'request-text' }, el('span', { class: 'settled-text', text })),
      undo,
      el('p', { class: 'item-status', dataset: { testid: 'request-status' } }),
    ];
  }

  /** The line's message: why a decision failed, or what it is doing now. */
  updateStatus(node, request) {
    if (node.classList.contains('busy')) return;
    const status = node.querySelector('.item-status');
    const error = this.errors.get(request.id);
    const fresh = !!error && status.textContent !== error;
    status.textContent = error ?? '';
    status.classList.toggle('bad', !!error);
    if (fresh) status.scrollIntoView({ block: 'nearest' }); // the reason is read where the tap was
  }

  /** Undo, unless the tap is the second of the double tap that decided (Undo appears under it). */
  undoTap(request, button) {
    const line = button.closest('.line');
    if (performance.now() - Number(line.dataset.drawnAt ?? 0) < SETTLE_MS) return;
    this.actions.undo(request, button);
  }

  /** A tap on Approve or Reject, through the guards. */
  tap(node, request, action, button) {
    if (this.stale) return;
    const status = node.querySelector('.item-status');
    if (performance.now() - Number(node.dataset.movedAt ?? 0) < SETTLE_MS) {
      status.textContent = 'The list moved: tap again.';
      status.classList.remove('bad');
      return;
    }
    if (action === 'approve' && request.kind === 'stamp' && request.count >= LARGE_STAMP_COUNT && button.dataset.confirming !== 'true') {
      button.dataset.confirming = 'true';
      button.textContent = `Confirm ${plural(request.count, 'stamp')}`;
      status.textContent = `${plural(request.count, 'stamp')} is a lot: tap again to approve.`;
      status.classList.remove('bad');
      // A second tap at once is a double tap, not a confirmation.
      button.dataset.confirmFrom = String(performance.now() + 400);
      setTimeout(() => {
        if (!button.isConnected) return;
        delete button.dataset.confirming;
        button.textContent = 'Approve';
        if (status.textContent.endsWith('tap again to approve.')) status.textContent = '';
      }, CONFIRM_MS);
      return;
    }
    if (button.dataset.confirming === 'true' && performance.now() < Number(button.dataset.confirmFrom)) return;
    if (action === 'reject') { this.askReason(node, request); return; }
    this.actions.decide(request, action, node);
  }

  /** A and R decide the focused line; a held key (auto-repeat) decides nothing more. */
  key(event) {
    const line = event.target.closest?.('.line');
    if (!line || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.matches('select, input, textarea')) return; // typing in the reason list picks a reason
    if (event.repeat && (event.key === 'Enter' || event.key === ' ')) { event.preventDefault(); return; }
    const key = event.key.toLowerCase();
    if (key !== 'a' && key !== 'r') return;
    event.preventDefault();
    if (event.repeat) return;
    line.querySelector(key === 'a' ? '[data-testid="approve"]' : '[data-testid="reject"]')?.click();
  }

  /** Marks the queue as not current (the connection is lost): nothing in it can be decided. */
  setStale(stale) {
    this.stale = stale;
    this.list.classList.toggle('stale', stale);
    this.list.inert = stale;
  }

  /** Every second: the countdowns, and the decided lines whose time in place is up. */
  tick() {
    const now = Date.now();
    for (const node of this.list.querySelectorAll('.line[data-status="pending"]')) {
      const request = this.shown.get(node.dataset.requestId);
      const expiry = node.querySelector('.expiry');
      if (!request?.expiresAt || !expiry) continue;
      const left = Date.parse(request.expiresAt) - now;
      const seconds = Math.max(0, Math.ceil(left / 1000));
      const soon = left < SOON_MS;
      const clock = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
      const text = soon ? `⏳ Expiring soon: ${clock} left` : `expires in ${clock}`;
      if (expiry.textContent !== text) expiry.textContent = text;
      node.dataset.soon = String(soon);
    }
    if ([...this.kept.values()].some((k) => k.until <= now)) this.actions.redraw();
  }

  /** Forgets everything drawn (another store opened). */
  clear() {
    this.kept.clear();
    this.shown.clear();
    this.list.replaceChildren();
  }
}
