"""Driving a page by the keyboard alone, as a person without a mouse does: move the focus
with Tab, and ask what has it and whether it can be seen."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page

#: The name a control is announced by: its label, or the text of a link or button.
_FOCUSED_NAME = """(() => {
  const e = document.activeElement;
  if (!e) return "";
  const label = e.labels && e.labels.length ? e.labels[0].innerText : "";
  return (label || e.innerText || e.value || "").replace(/\\s+/g, " ").trim();
})()"""

#: What a sighted keyboard user sees of the focus: the focused element's outline.
_FOCUS_RING = """(() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  const s = getComputedStyle(e);
  return {tag: e.tagName, style: s.outlineStyle, width: parseFloat(s.outlineWidth) || 0};
})()"""


def focused_name(page: Page) -> str:
    return str(page.evaluate(_FOCUSED_NAME))


def tab_to(page: Page, name: str, *, limit: int = 60, backwards: bool = False) -> None:
    """Presses Tab (or Shift+Tab) until the control called `name` has the focus."""
    key = "Shift+Tab" if backwards else "Tab"
    seen = []
    for _ in range(limit):
        page.keyboard.press(key)
        focused = focused_name(page)
        if focused == name:
            return
        seen.append(focused)
    raise AssertionError(f"{key} never reached {name!r}; it went through {seen}")


def assert_focus_visible(page: Page) -> None:
    """The focused element shows a ring: an outline that is neither `none` nor zero wide."""
    ring: dict[str, Any] | None = page.evaluate(_FOCUS_RING)
    assert ring is not None, "nothing has the focus"
    assert ring["style"] != "none" and ring["width"] > 0, (
        f"the focused {ring['tag']} ({focused_name(page)!r}) shows no focus ring: {ring}"
    )
