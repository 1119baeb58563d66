"""Table hooks of assets/layout.css: cells name their column for the phone cards, lower-priority
columns carry the width they hide below, and only widths the stylesheet knows are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import reflex as rx

from dashboard.components.panel import (HIDE_BELOW, STACKED_TABLE, cell, column_headers,
                                        data_table)

STYLESHEET = Path(__file__).resolve().parents[2] / "assets" / "layout.css"


def test_a_cell_names_its_column_and_carries_its_hooks():
    html = str(cell(rx.text("Failed"), label="Status", hide_below=1024, actions=True))
    assert '"data-label":"Status"' in html
    assert 'className:"hide-below-1024 cell-actions"' in html
    assert "className" not in str(cell(rx.text("#12")))  # no hooks asked: no class at all


def test_hidden_columns_hide_their_header_and_tables_stack_on_phones():
    headers = str(column_headers("Endpoint", "In flight", hide_below={"In flight": 1280}))
    assert headers.count("hide-below-1280") == 1 and '"In flight"' in headers
    assert f'className:"{STACKED_TABLE} cron-table"' in str(
        data_table(column_headers("Job"), rx.table.body(), class_name="cron-table"))


@pytest.mark.parametrize("width", [1000, 768])
def test_a_width_without_a_rule_in_the_stylesheet_is_refused(width: int):
    with pytest.raises(ValueError, match=rf"hide_below: {width} px is not one of"):
        cell(rx.text("3"), label="In flight", hide_below=width)


def test_the_stylesheet_has_a_rule_for_every_width():
    css = STYLESHEET.read_text()
    for width in HIDE_BELOW:
        assert f".hide-below-{width} {{ display: none; }}" in css
        assert f"(max-width: {width - 1}.98px)" in css
