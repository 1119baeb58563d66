"""Cursor paging shared by the list pages (Dead letters, Audit log): Next/Previous over any
number of rows with one page query per view, never a count.

The mixin keeps the cursor of the page shown and a stack of the cursors before it, so Previous
re-reads exactly the page it left. A state using it implements `_read()` (load the page at
`self.cursor`, set `self.next_cursor`).
"""

from __future__ import annotations

import reflex as rx

from dashboard.state.session import signed_in


class CursorPager(rx.State, mixin=True):
    cursor: int = 0  # 0: the first page
    next_cursor: int = 0  # 0: no next page
    previous: list[int] = []  # cursors of the pages before this one (Previous pops one)

    @rx.var
    def page_number(self) -> int:
        return len(self.previous) + 1

    async def _read(self) -> None:
        raise NotImplementedError

    @rx.event
    async def next_page(self) -> None:
        if not self.next_cursor or not await signed_in(self):
            return
        self.previous = [*self.previous, self.cursor]
        self.cursor = self.next_cursor
        await self._read()

    @rx.event
    async def previous_page(self) -> None:
        if not self.previous or not await signed_in(self):
            return
        self.cursor, self.previous = self.previous[-1], self.previous[:-1]
        await self._read()
