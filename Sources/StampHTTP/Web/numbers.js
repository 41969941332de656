// The owner's numbers: the last 30 days from GET /v1/stores/{id}/summary, as totals and as
// charts (charts.js). Days are the browser's calendar days (its UTC offset goes with the call).
// Read when the view opens, and again a few seconds after the store's events while it is open,
// so today's bars grow as the day goes.
import { $, ApiError, el, errorText } from '/assets/common.js';
import { barChart } from '/assets/charts.js';

const DAYS = 30;
const REFRESH_AFTER_EVENTS_MS = 3_000;

export class Numbers {
  constructor(call) {
    this.call = call;
    this.store = null;
    this.visible = false;
    this.timer = 0;
  }

  open(store) {
    this.store = store;
    this.visible = true;
    this.load();
  }

  close() {
    this.visible = false;
    clearTimeout(this.timer);
  }

  /** Something happened at the store: read again soon, once, if the numbers are on screen. */
  changed() {
    if (!this.visible || this.timer) return;
    this.timer = setTimeout(() => { this.timer = 0; this.load(); }, REFRESH_AFTER_EVENTS_MS);
  }

  async load() {
    const store = this.store;
    if (!store) return;
    const offset = -new Date().getTimezoneOffset();
    try {
      const summary = await this.call(`/v1/stores/${encodeURIComponent(store.id)}/summary?days=${DAYS}&utcOffsetMinutes=${offset}`);
      if (this.store !== store) return;
      this.draw(summary.days);
      $('numbers-error').textContent = '';
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      $('numbers-error').textContent = `The numbers could not be read: ${errorText(error)}`;
    }
  }

  draw(days) {
    const sum = (value) => days.reduce((total, day) => total + value(day), 0);
    const requests = (status) => (day) => day.requests[status];
    const totals = [
      ['Stamps given', sum((d) => d.stampsGiven), 'numbers-stamps'],
      ['Rewards used', sum((d) => d.rewardsUsed), 'numbers-rewards'],
      ['Requests approved', sum(requests('approved')), 'numbers-approved'],
      ['New customers', sum((d) => d.newCustomers), 'numbers-new'],
    ];
    $('numbers-totals').replaceChildren(...totals.map(([label, value, testid]) =>
      el('div', {}, el('dt', { text: label }), el('dd', { dataset: { testid }, text: String(value) }))));
    $('charts').replaceChildren(
      barChart({ title: 'Stamps given', days, testid: 'chart-stamps',
        series: [{ key: 'stampsGiven', label: 'Stamps', value: (d) => d.stampsGiven }] }),
      barChart({ title: 'Rewards used', days, testid: 'chart-rewards',
        series: [{ key: 'rewardsUsed', label: 'Rewards', value: (d) => d.rewardsUsed }] }),
      barChart({ title: 'Requests by status', unit: 'by the day they were made', days, testid: 'chart-requests',
        series: [
          { key: 'approved', label: 'Approved', value: requests('approved') },
          { key: 'rejected', label: 'Rejected', value: requests('rejected') },
          { key: 'expired', label: 'Expired', value: requests('expired') },
          { key: 'cancelled', label: 'Cancelled', value: requests('cancelled') },
          { key: 'undone', label: 'Undone', value: requests('undone') },
          { key: 'pending', label: 'Pending', value: requests('pending') },
        ] }),
      barChart({ title: 'Customers', unit: 'new: their card was made that day; returning: a visit with an older card', days,
        testid: 'chart-customers',
        series: [
          { key: 'newCustomers', label: 'New', value: (d) => d.newCustomers },
          { key: 'returningCustomers', label: 'Returning', value: (d) => d.returningCustomers },
        ] }));
  }
}
