// The owner's settings for the open store: its profile, its menu, and the stamp card with its
// rules. Each is a form of its own that sends one PATCH /v1/stores/{id} with only its fields, so
// saving the menu never overwrites a profile change made on another device meanwhile.
//
// The forms do not check their values in the browser (novalidate): the server's problem answer
// is the one source of what is allowed, and its `field` puts the message under the input
// (`name`, `menu[2].price`, `rules.dailyStampCap`). Inputs shown in minutes map to the API's
// seconds, and their problems to the minute inputs, through `aliases`.
import { $, ApiError, clearProblems, el, isBusy, setBusy, showProblem } from '/assets/common.js';

const MENU_LIMIT = 50;

export class Settings {
  /**
   * @param call the page's authenticated API call
   * @param saved called with the store as the server answered it after each change
   */
  constructor(call, saved) {
    this.call = call;
    this.saved = saved;
    this.store = null;
    this.forms = [
      { form: $('profile-form'), body: () => this.profileBody() },
      { form: $('menu-form'), body: () => this.menuBody() },
      {
        form: $('rules-form'), body: () => this.rulesBody(),
        aliases: { requestTtlSeconds: 'requestTtlMinutes', 'rules.stampCooldownSeconds': 'stampCooldownMinutes' },
      },
    ];
    for (const entry of this.forms) entry.form.addEventListener('submit', (event) => this.save(event, entry));
    $('menu-add').addEventListener('click', () => {
      if ($('menu-rows').children.length >= MENU_LIMIT) return;
      this.addMenuRow({ name: '', price: '' }).querySelector('input').focus();
    });
  }

  /** Fills every form from `store` (on opening the store, and after each save). */
  show(store) {
    this.store = store;
    const profile = $('profile-form').elements;
    profile.name.value = store.name;
    profile.address.value = store.address ?? '';
    profile.openHours.value = store.openHours ?? '';
    profile.latitude.value = store.latitude ?? '';
    profile.longitude.value = store.longitude ?? '';

    $('menu-rows').replaceChildren();
    for (const item of store.menu) this.addMenuRow(item);

    const rules = $('rules-form').elements;
    rules.rewardItem.value = store.rewardItem;
    rules.stampsPerReward.value = store.stampsPerReward;
    rules.requestTtlMinutes.value = minutes(store.requestTtlSeconds);
    rules.pendingPerCustomer.value = store.rules.pendingPerCustomer;
    rules.stampCooldownMinutes.value = minutes(store.rules.stampCooldownSeconds);
    rules.dailyStampCap.value = store.rules.dailyStampCap;
    rules.requireCounterCode.checked = store.rules.requireCounterCode;
    rules.autoApproveAtCounter.checked = store.rules.autoApproveAtCounter;

    for (const { form } of this.forms) {
      clearProblems(form, form.querySelector('.error'));
      form.querySelector('.form-status').textContent = '';
    }
  }

  profileBody() {
    const fields = $('profile-form').elements;
    const text = (input) => input.value.trim() || null; // blank clears
    const number = (input) => (input.value.trim() === '' ? null : Number(input.value.trim().replace(',', '.')));
    return {
      name: fields.name.value.trim(),
      address: text(fields.address),
      openHours: text(fields.openHours),
      // Both or neither: one alone is the server's 400 under the other.
      ...(fields.latitude.value.trim() || fields.longitude.value.trim() || this.store.latitude !== undefined
        ? withoutMissing({ latitude: number(fields.latitude), longitude: number(fields.longitude) })
        : {}),
    };
  }

  menuBody() {
    const menu = [...$('menu-rows').children].map((row) => {
      const [name, price] = row.querySelectorAll('input');
      return { name: name.value.trim(), price: price.value.trim() === '' ? null : Number(price.value.trim()) };
    });
    return { menu };
  }

  rulesBody() {
    const fields = $('rules-form').elements;
    // Minutes become whole seconds; text that is no number goes as it is typed, for the server to name.
    const number = (input, scale = 1) => {
      const text = input.value.trim().replace(',', '.');
      if (text === '') return null;
      const value = Number(text);
      if (!Number.isFinite(value)) return text;
      return scale === 1 ? value : Math.round(value * scale);
    };
    return {
      rewardItem: fields.rewardItem.value.trim(),
      stampsPerReward: number(fields.stampsPerReward),
      requestTtlSeconds: number(fields.requestTtlMinutes, 60),
      rules: {
        pendingPerCustomer: number(fields.pendingPerCustomer),
        stampCooldownSeconds: number(fields.stampCooldownMinutes, 60),
        dailyStampCap: number(fields.dailyStampCap),
        requireCounterCode: fields.requireCounterCode.checked,
        autoApproveAtCounter: fields.autoApproveAtCounter.checked,
      },
    };
  }

  addMenuRow(item) {
    const list = $('menu-rows');
    const row = el('li', { class: 'menu-row', dataset: { testid: 'menu-row' } });
    list.append(row);
    this.numberMenuRows();
    const [name, price] = row.querySelectorAll('input');
    name.value = item.name;
    price.value = item.price;
    return row;
  }

  /** Names the rows' inputs after their place (`menu[2].price`), as the server's problems do. */
  numberMenuRows() {
    [...$('menu-rows').children].forEach((row, index) => {
      const values = [...row.querySelectorAll('input')].map((input) => input.value);
      const prefix = `menu-${index}`;
      const remove = el('button', {
        type: 'button', class: 'quiet', dataset: { testid: 'menu-remove' }, 'aria-label': `Remove menu item ${index + 1}`,
        on: { click: () => { row.remove(); this.numberMenuRows(); } },
      }, 'Remove');
      row.replaceChildren(
        el('div', {}, el('label', { for: `${prefix}-name`, text: 'Item' }),
          el('input', { id: `${prefix}-name`, name: `menu[${index}].name`, maxlength: '60', autocomplete: 'off' })),
        el('div', {}, el('label', { for: `${prefix}-price`, text: 'Price' }),
          el('input', { id: `${prefix}-price`, name: `menu[${index}].price`, inputmode: 'numeric', autocomplete: 'off' })),
        remove);
      row.querySelectorAll('input').forEach((input, i) => { input.value = values[i] ?? ''; });
    });
    $('menu-add').hidden = $('menu-rows').children.length >= MENU_LIMIT;
  }

  async save(event, { form, body, aliases = {} }) {
    event.preventDefault();
    const button = form.querySelector('button[type="submit"]');
    if (isBusy(button) || !this.store) return;
    const status = form.querySelector('.form-status');
    const fallback = form.querySelector('.error');
    clearProblems(form, fallback);
    status.textContent = '';
    setBusy(button, true);
    const store = this.store;
    try {
      const answer = await this.call(`/v1/stores/${encodeURIComponent(store.id)}`, { method: 'PATCH', body: body() });
      if (this.store !== store) return;
      this.saved(answer);
      this.show(answer);
      status.textContent = 'Saved.';
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      showProblem(form, error, fallback, aliases);
    } finally {
      setBusy(button, false);
    }
  }
}

const minutes = (seconds) => String(Math.round((seconds / 60) * 100) / 100);

/** Leaves out a coordinate the owner did not type while the other is typed, so the server names it. */
function withoutMissing(point) {
  if (point.latitude === null && point.longitude !== null) return { longitude: point.longitude };
  if (point.longitude === null && point.latitude !== null) return { latitude: point.latitude };
  return point;
}
