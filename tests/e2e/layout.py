"""Narrow windows in a real browser: no page scrolls sideways at the widths an operator uses
(laptop, split screen, tablet, phone), and nothing in it either (a table or a dialog in its
own box).

Helpers for the e2e tests, which call them on the stack and the page they already have open:
a viewport resize costs milliseconds, a stack start costs seconds.
"""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Locator, Page, expect

from dashboard.routes import NAV

WIDTHS = (1280, 1000, 768, 390)  # laptop, split screen, tablet, phone
PHONE = 390
HEIGHT = 900

#: the page's and the window's width, what sticks out past the window's right edge (outermost
#: elements only: the message of a failure) and the boxes that scroll sideways (with a
#: table's cells that stick out)
_MEASURE = """() => {
  const width = window.innerWidth;
  const name = el => el.id ? '#' + el.id
    : el.tagName.toLowerCase() + '.' + String(el.className).trim().split(/\\s+/).join('.');
  const right = el => el.getBoundingClientRect().right;
  const past = [...document.body.querySelectorAll('*')]
    .filter(el => right(el) > width + 0.5 && right(el.parentElement) <= width + 0.5)
    .map(el => `${name(el)} ends at ${Math.round(right(el))}px`);
  const boxes = [...document.querySelectorAll('*')]
    .filter(el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX)
      && el.scrollWidth > el.clientWidth + 1)
    .map(el => `${name(el)} in ${name(el.closest('[id]') || el)}: `
      + `${el.scrollWidth} > ${el.clientWidth}`
      + ` (cells: ${[...el.querySelectorAll('td, th')].filter(c => right(c) > right(el) + 0.5)
          .slice(0, 3).map(c => `${c.dataset.label || c.innerText.slice(0, 20)} `
            + `${Math.round(c.getBoundingClientRect().width)}px`)})`);
  return {page: document.documentElement.scrollWidth, window: width, past: past.slice(0, 8),
          boxes};
}"""


async def assert_fits(page: Page, what: str, widths: tuple[int, ...] = WIDTHS) -> None:
    """At each width: the page is no wider than the window (no horizontal scrollbar) and
    nothing scrolls sideways in its own box. Leaves the viewport at the last width."""
    for width in widths:
        await page.set_viewport_size({"width": width, "height": HEIGHT})
        seen: dict[str, Any] = await page.evaluate(_MEASURE)
        assert seen["page"] <= seen["window"], (
            f"{what} at {width}px: the page is {seen['page']}px wide; {seen['past']}")
        assert seen["boxes"] == [], f"{what} at {width}px: {seen['boxes']}"


async def assert_usable(*controls: Locator) -> None:
    """Each control is on screen and would take a click (nothing covers it, it is enabled):
    Playwright's actionability checks, without the click."""
    for control in controls:
        await expect(control).to_be_visible()
        await control.click(trial=True, timeout=5_000)


async def go_to(page: Page, label: str) -> None:
    """Follow a header link (it must be visible and clickable at the current width)."""
    route = next(item.route for item in NAV if item.label == label)
    link = page.locator("#main-nav").get_by_role("link", name=label)
    await assert_usable(link)
    await link.click()
    await expect(page).to_have_url(re.compile(rf"{route}/?$"))
    await expect(link).to_have_attribute("aria-current", "page")


async def assert_header_usable(page: Page) -> None:
    """At the current width: every header link, the signed-in name and Sign out are usable."""
    await assert_usable(*(page.locator("#main-nav").get_by_role("link", name=item.label)
                          for item in NAV), page.locator("#sign-out"))
    await expect(page.locator("#current-user")).to_be_visible()
