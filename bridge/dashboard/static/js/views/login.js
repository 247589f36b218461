// Sign in with any user's gateway token (GET /api/v2/users/me says whose it is). The view the
// address names (e.g. a pasted #/interceptions/<id>) opens once signed in.

import { ME, apiGet, explain, signIn } from "../api.js";
import { h, notice, replace } from "../dom.js";

export function renderLogin(main, { message = null, onSignedIn }) {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "Paste a gateway token", "aria-describedby": "login-help",
  });
  const status = h("div", { class: "login-status", dataset: { role: "login-status" } },
    message ? notice("error", message) : null);
  const submit = h("button", { type: "submit", class: "button primary wide" }, "Sign in");
  const form = h("form", { class: "login-form", dataset: { form: "login" } },
    h("label", { for: "token", class: "field-label" }, "Gateway token"),
    input,
    h("p", { id: "login-help", class: "muted small" },
      "Your gateway token (python -m bridge tokens create <user>). It is kept in this tab only and sent to this gateway's API. "
      + "Administrators see everyone's records, other users their own."),
    submit,
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    submit.disabled = true;
    replace(status, h("div", { class: "muted small" }, "Checking the token…"));
    let identity;
    try {
      identity = await apiGet(ME, {}, { token });
    } catch (error) {
      replace(status, notice("error", explain(error)));
      submit.disabled = false;
      input.select();
      return;
    }
    signIn(token, identity);
    onSignedIn();
  });
  replace(main, h("div", { class: "view login", dataset: { view: "login" } },
    h("section", { class: "card login-card" },
      h("h1", {}, "Sign in"),
      h("p", { class: "muted" }, "Usage, requests and the audit records of the AI gateway."),
      form)));
  input.focus();
}
