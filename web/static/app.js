// modelpress dashboard: what every page shares. htmx requests carry the session's CSRF token
// in a header (forms carry it as a hidden field), so every state-changing request has it.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

document.addEventListener("htmx:configRequest", (event) => {
  event.detail.headers["X-CSRF-Token"] = csrfToken();
});

// A table wider than the screen scrolls inside its .table-wrap. Keyboard users can scroll it
// only if it can take the focus, so a wrapper that scrolls becomes a focusable region named
// by its table's caption (and stops being one when the window is wide enough again).
function focusableScrollers() {
  for (const wrap of document.querySelectorAll(".table-wrap")) {
    const scrolls = wrap.scrollWidth > wrap.clientWidth;
    if (scrolls && !wrap.hasAttribute("tabindex")) {
      const caption = wrap.querySelector("caption");
      wrap.tabIndex = 0;
      wrap.setAttribute("role", "region");
      wrap.setAttribute("aria-label", (caption && caption.textContent.trim()) || "Table");
      wrap.dataset.scrollRegion = "1";
    } else if (!scrolls && wrap.dataset.scrollRegion) {
      for (const name of ["tabindex", "role", "aria-label", "data-scroll-region"]) {
        wrap.removeAttribute(name);
      }
    }
  }
}

focusableScrollers();
window.addEventListener("resize", focusableScrollers);
document.addEventListener("htmx:afterSettle", focusableScrollers);

// htmx gives the focus back after a live update only to an element with an id that the new
// content has too. A keyboard user on any other link or button of a part that refreshes
// itself (a running job's page, the jobs list) would be thrown back to the top of the page
// every few seconds, and one on a button the new content no longer has (Cancel, once the
// job ended) too. So the same control is found again by what it is; failing that, the focus
// goes to the first control of the nearest part with an id that held it (where the Cancel
// button was, the download of the finished job's model).
const FOCUSABLE = [
  "a[href]",
  "button:not([disabled])",
  'input:not([type="hidden"]):not([disabled])',
  "select:not([disabled])",
  "textarea:not([disabled])",
  "summary",
  '[tabindex]:not([tabindex="-1"])',
].join(",");

function signature(element) {
  const text = element.textContent.replace(/\s+/g, " ").trim();
  return ["href", "name", "value", "aria-label"]
    .map((name) => element.getAttribute(name))
    .concat([element.tagName, text])
    .join("\u0000");
}

let focusBeforeSwap = null;

document.addEventListener("htmx:beforeSwap", (event) => {
  const active = document.activeElement;
  const target = event.detail.target;
  focusBeforeSwap = null;
  if (!active || active === document.body || !target || !target.contains(active)) return;
  const places = [];
  for (let e = active.parentElement; e && e !== target.parentElement; e = e.parentElement) {
    if (e.id) places.push(e.id);
  }
  if (places.length) focusBeforeSwap = { signature: signature(active), places };
});

document.addEventListener("htmx:afterSettle", () => {
  const lost = focusBeforeSwap;
  focusBeforeSwap = null;
  if (!lost || (document.activeElement && document.activeElement !== document.body)) return;
  const containers = lost.places.map((id) => document.getElementById(id)).filter(Boolean);
  const visible = (e) => e.getClientRects().length > 0;
  const outermost = containers[containers.length - 1];
  const same = outermost
    ? [...outermost.querySelectorAll(FOCUSABLE)].find((e) => signature(e) === lost.signature)
    : null;
  if (same) {
    same.focus();
    return;
  }
  for (const container of containers) {
    const first = [...container.querySelectorAll(FOCUSABLE)].find(visible);
    if (first) {
      first.focus();
      return;
    }
  }
});

window.modelpress = { csrfToken };
