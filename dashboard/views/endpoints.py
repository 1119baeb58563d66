"""The Endpoints view: the overview bound to EndpointsState, its dialogs and header status."""

from __future__ import annotations

import reflex as rx

from dashboard.components.endpoints import (disable_dialog, endpoints_panel, resync_dialog,
                                            retry_config_dialog, retry_config_editor)
from dashboard.state.endpoints import EndpointsState as S
from dashboard.state.session import AuthState


def endpoints_status() -> rx.Component:
    """Header slot: time of the last refresh and a Refresh button."""
    return rx.hstack(
        rx.text(rx.cond(S.refreshed_at != "", f"Updated {S.refreshed_at} UTC", ""),
                size="1", color_scheme="gray", class_name="header-detail"),
        rx.icon_button(rx.icon("refresh-cw", size=14), on_click=S.load, size="1",
                       variant="ghost", aria_label="Refresh endpoints"),
        align="center",
        spacing="2",
    )


def _retry_editor() -> rx.Component:
    editor = retry_config_editor(
        S.retry_form, S.retry_jitter, S.retry_errors, is_default=S.editor_is_default,
        saving=S.saving, on_field=S.set_retry_field, on_jitter=S.set_retry_jitter,
        on_save=S.save_retry_config, on_reset=S.reset_retry_config,
        on_cancel=S.close_retry_editor)
    return retry_config_dialog(S.editor_id != 0, S.editor_url, editor,
                               on_open_change=lambda _open: S.close_retry_editor())


def endpoints_view() -> rx.Component:
    return rx.vstack(
        rx.vstack(
            rx.heading("Endpoints", size="6"),
            rx.text("Applications and their endpoints: health, deliveries in flight, recent "
                    "success rate, retry policy. Disable or re-enable an endpoint, or re-send "
                    "every message it received (Re-sync), here.",
                    size="2", color_scheme="gray"),
            spacing="1",
        ),
        endpoints_panel(
            S.endpoints, S.app_count, S.failing_count, S.disabled_count,
            is_busy=S.busy.contains, on_disable=S.ask_disable, on_enable=S.enable,
            on_edit_retry=S.open_retry_editor, can_manage=AuthState.is_admin,
            on_resync=S.ask_resync),
        disable_dialog(S.disable_id != 0, S.disable_url, S.disable_reason, S.disable_error,
                       S.busy.contains(S.disable_id), on_reason=S.set_disable_reason,
                       on_confirm=S.confirm_disable, on_cancel=S.cancel_disable),
        _retry_editor(),
        resync_dialog(S.resync_id != 0, S.resync_url, S.resync_total, S.resync_since,
                      S.resync_reason, S.resync_error, S.resync_starting,
                      on_since=S.set_resync_since, on_reason=S.set_resync_reason,
                      on_confirm=S.confirm_resync, on_cancel=S.cancel_resync),
        spacing="5",
        width="100%",
    )
