// The dashboard's router: #/overview, #/leaderboard, #/sessions?filters, #/sessions/<id>, #/interceptions?filters,
// #/interceptions/<id>, #/budgets.

import { getIdentity, getToken, signOut } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { renderBudgets } from "./views/budgets.js";
import { renderDetail } from "./views/detail.js";
import { renderInterceptions } from "./views/interceptions.js";
import { renderLeaderboard } from "./views/leaderboard.js";
import { renderLogin } from "./views/login.js";
import { renderOverview } from "./views/overview.js";
import { renderSession } from "./views/session.js";
import { renderSessions } from "./views/sessions.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
const sessionUser = document.getElementById("session-user");
const sessionRole = document.getElementById("session-role");
let current = null; // the AbortController of the view on screen

// Each page: its address (an id in the first group), its tab, its title, what renders it.
const ROUTES = [
  { path: /^\/(?:overview)?$|^$/, tab: "overview", title: () => "Overview", render: (params, ctx) => renderOverview(main, params, ctx) },
  { path: /^\/leaderboard$/, tab: "leaderboard", title: () => "Leaderboard", render: (params, ctx) => renderLeaderboard(main, params, ctx) },
  { path: /^\/sessions$/, tab: "sessions", title: () => "Sessions", render: (params, ctx) => renderSessions(main, params, ctx) },
  { path: /^\/sessions\/([^/]+)$/, tab: "sessions", title: (id) => `Session ${id.slice(0, 8)}`, render: (_, ctx) => renderSession(main, ctx) },
  { path: /^\/interceptions$/, tab: "interceptions", title: () => "Interceptions",
    render: (params, ctx) => renderInterceptions(main, params, ctx) },
  { path: /^\/interceptions\/([^/]+)$/, tab: "interceptions", title: (id) => `Interception ${id.slice(0, 8)}`,
    render: (_, ctx) => renderDetail(main, ctx) },
  { path: /^\/budgets$/, tab: "budgets", title: () => "Budgets", render: (_, ctx) => renderBudgets(main, ctx) },
];

/** The route a path names, with its id decoded; null when none does (or the id is not valid percent-encoding). */
function matchRoute(path) {
  for (const one of ROUTES) {
    const match = path.match(one.path);
    if (!match) continue;
    try {
      return { ...one, id: match[1] === undefined ? null : decodeURIComponent(match[1]) };
    } catch {
      return null; // e.g. a pasted "#/sessions/%E0%A4": no page has that address
    }
  }
  return null;
}

function parseHash() {
  const raw = window.location.hash.replace(/^#/, "") || "/overview";
  const [path, query = ""] = raw.split("?", 2);
  return { path, params: new URLSearchParams(query) };
}

function setChrome(signedIn, view = "") {
  nav.hidden = !signedIn;
  session.hidden = !signedIn;
  const identity = signedIn ? getIdentity() : null;
  sessionUser.textContent = identity?.username || "";
  sessionRole.textContent = identity?.is_admin ? "admin" : "user";
  sessionRole.classList.toggle("admin", Boolean(identity?.is_admin));
  for (const link of nav.querySelectorAll("a")) {
    const active = link.dataset.view === view;
    link.classList.toggle("active", active);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route(message = null) {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  const ctx = { signal: controller.signal };
  const hash = window.location.hash;
  delete main.dataset.rendered;
  // main[data-rendered] = the hash whose view finished rendering (what the tests and a person wait for).
  const done = (promise) => promise.then(() => {
    if (current === controller) main.dataset.rendered = hash;
  }, (error) => {
    if (current === controller) showError(error);
  });
  if (!getToken() || !getIdentity()) { // both are kept at sign-in (a tab from before the identity: sign in again)
    setChrome(false);
    document.title = "Sign in · bridge";
    renderLogin(main, { message, onSignedIn: () => route() });
    main.dataset.rendered = hash;
    return;
  }
  const { path, params } = parseHash();
  const found = matchRoute(path);
  if (found) {
    const { tab, title, render, id } = found;
    setChrome(true, tab);
    document.title = `${title(id)} · bridge`;
    done(render(params, { ...ctx, id, params }));
  } else {
    setChrome(true);
    replace(main, h("div", { class: "view" }, notice("error", "There is no such page."), h("a", { href: "#/overview" }, "Go to the overview")));
    main.dataset.rendered = hash;
  }
  window.scrollTo(0, 0);
}

function showError(error) {
  if (error?.name === "AbortError") return;
  console.error(error);
  replace(main, h("div", { class: "view" }, notice("error", `Something went wrong: ${error?.message || error}`)));
}

document.getElementById("logout").addEventListener("click", () => {
  signOut();
  route();
});

window.addEventListener("bridge:unauthorized", (event) => {
  signOut();
  route(`Signed out: ${event.detail}`);
});

window.addEventListener("hashchange", () => route());
route();
