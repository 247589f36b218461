// The dashboard's router: #/overview, #/leaderboard, #/interceptions?filters, #/interceptions/<id>.

import { getIdentity, getToken, signOut } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { renderDetail } from "./views/detail.js";
import { renderInterceptions } from "./views/interceptions.js";
import { renderLeaderboard } from "./views/leaderboard.js";
import { renderLogin } from "./views/login.js";
import { renderOverview } from "./views/overview.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
const sessionUser = document.getElementById("session-user");
const sessionRole = document.getElementById("session-role");
let current = null; // the AbortController of the view on screen

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
  let match;
  if (path === "/overview" || path === "/" || path === "") {
    setChrome(true, "overview");
    document.title = "Overview · bridge";
    done(renderOverview(main, params, ctx));
  } else if (path === "/leaderboard") {
    setChrome(true, "leaderboard");
    document.title = "Leaderboard · bridge";
    done(renderLeaderboard(main, params, ctx));
  } else if (path === "/interceptions") {
    setChrome(true, "interceptions");
    document.title = "Interceptions · bridge";
    done(renderInterceptions(main, params, ctx));
  } else if ((match = path.match(/^\/interceptions\/([^/]+)$/))) {
    setChrome(true, "interceptions");
    const id = decodeURIComponent(match[1]);
    document.title = `Interception ${id.slice(0, 8)} · bridge`;
    done(renderDetail(main, { ...ctx, id }));
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
