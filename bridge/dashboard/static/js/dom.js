// DOM building without HTML strings: every piece of data goes in through textContent or an
// attribute value, so prompts and tool arguments (user content) can never become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === "value" || key === "checked" || key === "selected" || key === "disabled") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("a", {href: "#/x", class: "link"}, "text", otherNode) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

/** Rows with data-href open it on a click anywhere in them (a link in a row navigates by itself, a text selection does not). */
export function openRowsOnClick(table) {
  table.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    const tr = event.target.closest("tr[data-href]");
    if (tr && !window.getSelection()?.toString()) window.location.hash = tr.dataset.href;
  });
  return table;
}

// -- formatting -----------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function fmtInt(n) {
  return integer.format(Number(n) || 0);
}

/** 1234 -> "1.2k", 5600000 -> "5.6M" (axis labels). */
export function fmtCompact(n) {
  const v = Number(n) || 0;
  const abs = Math.abs(v);
  for (const [limit, suffix] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= limit) {
      const scaled = v / limit;
      return `${scaled >= 100 ? scaled.toFixed(0) : scaled.toFixed(1).replace(/\.0$/, "")}${suffix}`;
    }
  }
  return String(Math.round(v * 100) / 100);
}

/** The viewer's time zone (an IANA name such as "Europe/Berlin"): tables show times in it. */
export const VIEWER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

/** A time column's or field's title naming the zone its times are in: "Started (Europe/Berlin)". */
export function zoned(title, zone = VIEWER_ZONE) {
  return `${title} (${zone})`;
}

const dateTime = new Intl.DateTimeFormat("en-GB", {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  timeZone: VIEWER_ZONE,
});

export function fmtTime(iso) {
  if (!iso) return "—";
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? String(iso) : dateTime.format(new Date(ms));
}

export function fmtDuration(startIso, endIso) {
  const a = Date.parse(startIso);
  const b = Date.parse(endIso);
  if (Number.isNaN(a) || Number.isNaN(b)) return "—";
  const ms = Math.max(0, b - a);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** Pretty JSON when the text parses, else the text as it is. Returns {text, json: boolean}. */
export function prettyJson(value) {
  if (typeof value !== "string") {
    return { text: JSON.stringify(value, null, 2) ?? String(value), json: true };
  }
  try {
    const parsed = JSON.parse(value);
    if (parsed !== null && typeof parsed === "object") return { text: JSON.stringify(parsed, null, 2), json: true };
  } catch {
    // not JSON: shown as sent
  }
  return { text: value, json: false };
}

export function truncate(text, max) {
  const value = String(text ?? "").replace(/\s+/g, " ").trim();
  return value.length > max ? `${value.slice(0, max - 1)}…` : value;
}

/** A message block for errors and empty states. */
export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

export function spinner(label = "Loading…") {
  return h("div", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), label);
}
