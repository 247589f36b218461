// Budgets (SPEC §11). Administrators: every budget (GET budgets) with its limits, the spend of its
// current period and when that resets; a form that sets a user's or the default budget (PUT) and a
// delete per budget (DELETE), the API's refusals shown as it words them. Anyone else: their own
// budget, read-only (GET budgets/me).

import { BUDGETS, USERS, apiGet, apiSend, explain, isAdmin } from "../api.js";
import { fmtUsd } from "../costs.js";
import { fmtInt, fmtTime, h, notice, replace, spinner, zoned } from "../dom.js";

const DEFAULT = "default"; // the API's name of the default budget
const PERIODS = { day: "Day (UTC)", week: "Week (UTC, from Monday)", month: "Month (UTC)" };
const INTRO = "A limit on what a user may spend in USD and/or tokens (input, output and cache tokens together) per "
  + "UTC calendar day, ISO week or month. A user without a budget of their own has the default budget. "
  + "A call by a user whose spend has reached a limit is refused until the period resets.";

function whose(budget) {
  return budget.default ? "Default (everyone without their own)" : budget.user?.username || budget.user?.id || "—";
}

/** The address of a budget: a user's by id (a user may be named "default"), or the default budget. */
function budgetPath(userId) {
  return `${BUDGETS}/${encodeURIComponent(userId || DEFAULT)}`;
}

function limits(budget) {
  return [budget.limit_usd === null || budget.limit_usd === undefined ? "—" : fmtUsd(budget.limit_usd),
    budget.limit_tokens === null || budget.limit_tokens === undefined ? "—" : fmtInt(budget.limit_tokens)];
}

/** "spent / limit" figures of one budget, or "per user" for the default budget (each user has their own spend). */
function spent(budget) {
  if (budget.spend_usd === null || budget.spend_usd === undefined) return ["per user", "per user"];
  return [fmtUsd(budget.spend_usd), fmtInt(budget.spend_tokens)];
}

function state(budget) {
  if (budget.exceeded === true) return h("span", { class: "badge danger" }, "limit reached");
  if (budget.exceeded === false) return h("span", { class: "badge subtle" }, "under the limit");
  return h("span", { class: "muted" }, "—");
}

function budgetsTable(budgets, { onEdit, onDelete }) {
  if (budgets.length === 0) return notice("empty", "No budgets: nobody's spending is limited.");
  const deleteButton = (budget) => {
    const button = h("button", { type: "button", class: "button", dataset: { action: "delete" } }, "Delete");
    button.addEventListener("click", () => {
      if (button.dataset.armed) onDelete(budget, button);
      else {
        button.dataset.armed = "1";
        button.textContent = "Click again to delete";
      }
    });
    return button;
  };
  return h("div", { class: "table-wrap" }, h("table", { class: "data-table", dataset: { table: "budgets" } },
    h("thead", {}, h("tr", {}, h("th", {}, "Whose"), h("th", {}, "Period"), h("th", { class: "num" }, "Limit USD"),
      h("th", { class: "num" }, "Limit tokens"), h("th", { class: "num" }, "Spent USD"), h("th", { class: "num" }, "Tokens used"),
      h("th", {}, zoned("Resets")), h("th", {}, "State"), h("th", {}, ""))),
    h("tbody", {}, budgets.map((budget) => h("tr", { dataset: { budget: budget.default ? DEFAULT : budget.user?.id || "" } },
      h("td", { dataset: { role: "whose" } }, whose(budget)),
      h("td", {}, PERIODS[budget.period] || budget.period),
      limits(budget).map((text) => h("td", { class: "num" }, text)),
      spent(budget).map((text) => h("td", { class: "num" }, text)),
      h("td", { class: "nowrap" }, fmtTime(budget.resets_at)),
      h("td", { class: "nowrap" }, state(budget)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "button ghost", dataset: { action: "edit" }, onclick: () => onEdit(budget) }, "Edit"),
        " ", deleteButton(budget)))))));
}

function field(label, control) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control);
}

/** The set-a-budget form: whose (the default or a user), period, USD, tokens. ``onSave(userId, body)``. */
function budgetForm(users, onSave) {
  const who = h("select", { name: "whose" },
    h("option", { value: "" }, "Default (everyone without their own)"),
    users.map((user) => h("option", { value: user.id }, user.username)));
  const period = h("select", { name: "period" }, Object.entries(PERIODS).map(([value, text]) => h("option", { value }, text)));
  const usd = h("input", { name: "limit_usd", type: "number", min: "0", step: "any", placeholder: "no USD limit" });
  const tokens = h("input", { name: "limit_tokens", type: "number", min: "0", step: "1", placeholder: "no token limit" });
  const save = h("button", { type: "submit", class: "button primary" }, "Save budget");
  // novalidate: the API checks a budget and its 400 says what is wrong, in the same words as the CLI's
  const form = h("form", { class: "budget-form", novalidate: true, dataset: { form: "budget" } },
    field("Whose", who), field("Period", period), field("Limit (USD)", usd), field("Limit (tokens)", tokens),
    h("div", { class: "actions" }, save));
  const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    try {
      await onSave(who.value, { period: period.value, limit_usd: number(usd), limit_tokens: number(tokens) });
    } finally {
      save.disabled = false;
    }
  });
  const fill = (budget) => {
    who.value = budget.default ? "" : budget.user?.id || "";
    period.value = budget.period;
    usd.value = budget.limit_usd ?? "";
    tokens.value = budget.limit_tokens ?? "";
    form.scrollIntoView({ block: "nearest" });
    usd.focus();
  };
  return { form, fill };
}

async function renderAdmin(main, signal) {
  const status = h("div", { dataset: { role: "budget-status" } });
  const list = h("div", {}, spinner("Loading budgets…"));
  const formSlot = h("div", {}, spinner("Loading users…"));
  replace(main, h("div", { class: "view", dataset: { view: "budgets" } },
    h("div", { class: "toolbar" }, h("div", {}, h("h1", {}, "Budgets"), h("p", { class: "muted" }, INTRO))),
    h("section", { class: "card" }, h("header", { class: "card-header" }, h("h2", {}, "Set a budget"),
      h("span", { class: "muted small" }, "a user's or the default; saving replaces the one there was")), formSlot, status),
    h("section", { class: "card table-card" }, list)));

  const say = (kind, text) => replace(status, notice(kind, text));
  let editor = null;
  const reload = async () => {
    let budgets;
    try {
      ({ budgets } = await apiGet(BUDGETS, {}, { signal }));
    } catch (error) {
      if (error?.name === "AbortError" || signal.aborted) return;
      replace(list, notice("error", `The budgets could not be loaded: ${explain(error)}`));
      return;
    }
    replace(list, budgetsTable(budgets || [], {
      onEdit: (budget) => editor.fill(budget),
      onDelete: async (budget, button) => {
        button.disabled = true;
        try {
          await apiSend("DELETE", budgetPath(budget.default ? null : budget.user?.id));
        } catch (error) {
          button.disabled = false;
          say("error", `The budget was not deleted: ${explain(error)}`);
          return;
        }
        say("empty", `Deleted the budget of ${whose(budget)}.`);
        await reload();
      },
    }));
  };
  const users = await apiGet(USERS, {}, { signal });
  editor = budgetForm(users || [], async (userId, body) => {
    let saved;
    try {
      saved = await apiSend("PUT", budgetPath(userId), body);
    } catch (error) {
      say("error", `The budget was not saved: ${explain(error)}`);
      return;
    }
    say("empty", `Saved the budget of ${whose(saved)}.`);
    await reload();
  });
  replace(formSlot, editor.form);
  await reload();
}

async function renderOwn(main, signal) {
  replace(main, h("div", { class: "view", dataset: { view: "budgets" } }, spinner("Loading your budget…")));
  const { budget } = await apiGet(`${BUDGETS}/me`, {}, { signal });
  const rows = budget ? [
    ["Budget", budget.default ? "the default budget (you have none of your own)" : "your own budget"],
    ["Period", PERIODS[budget.period] || budget.period],
    ["Limit USD", limits(budget)[0]],
    ["Limit tokens", limits(budget)[1]],
    ["Spent USD this period", fmtUsd(budget.spend_usd)],
    ["Tokens used this period", fmtInt(budget.spend_tokens)],
    [zoned("Resets"), fmtTime(budget.resets_at)],
    ["State", state(budget)],
  ] : null;
  replace(main, h("div", { class: "view", dataset: { view: "budgets" } },
    h("div", { class: "toolbar" }, h("div", {}, h("h1", {}, "Your budget"), h("p", { class: "muted" }, INTRO))),
    notice("empty", "Budgets are set by administrators."),
    h("section", { class: "card budget-mine", dataset: { role: "my-budget" } }, rows
      ? h("dl", { class: "meta-grid" }, rows.map(([label, value]) => h("div", { class: "meta-item" }, h("dt", {}, label), h("dd", {}, value))))
      : notice("empty", "No budget applies to you: your calls are not limited by spend."))));
}

export function renderBudgets(main, { signal }) {
  return isAdmin() ? renderAdmin(main, signal) : renderOwn(main, signal);
}
