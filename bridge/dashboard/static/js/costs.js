// Costs as the views show them (SPEC §11): USD figures the API gives (null: nothing of it was
// priced, shown as "—", never as $0), added up over points and usages, and what an unpriced part means.

import { fmtInt } from "./dom.js";

/** "$1,234.56"; under a dollar enough decimals to show two significant digits ("$0.0042"); null -> "—". */
export function fmtUsd(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  const n = Number(value);
  const abs = Math.abs(n);
  const decimals = abs === 0 || abs >= 1 ? 2 : Math.min(6, Math.max(2, 1 - Math.floor(Math.log10(abs))));
  return `${n < 0 ? "-" : ""}$${abs.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals })}`;
}

/** Two costs added: null only when neither was priced. */
export function addCost(a, b) {
  const none = (v) => v === null || v === undefined;
  if (none(a) && none(b)) return null;
  return (Number(a) || 0) + (Number(b) || 0);
}

/** What a total leaves out: "excludes 3 calls to models without a price", or null when nothing. */
export function unpricedNote(count) {
  const n = Number(count) || 0;
  if (n <= 0) return null;
  return `excludes ${fmtInt(n)} ${n === 1 ? "call" : "calls"} to models without a price`;
}
