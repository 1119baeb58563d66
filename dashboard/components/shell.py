"""The page shell: header with the product name and navigation, then the content."""

from __future__ import annotations

import reflex as rx

from dashboard.routes import NAV, NavItem
from dashboard.state.session import AuthState


def _nav_link(item: NavItem, active: bool) -> rx.Component:
    return rx.link(
        rx.hstack(rx.icon(item.icon, size=16), rx.text(item.label, size="2", weight="medium"),
                  align="center", spacing="2"),
        href=item.route,
        underline="none",
        color_scheme="gray" if not active else "indigo",
        high_contrast=active,
        padding_x="0.75em",
        padding_y="0.4em",
        border_radius="6px",
        background=rx.color("accent", 3) if active else "transparent",
        aria_current="page" if active else None,
        class_name="main-nav-link",
    )


def _user_menu() -> rx.Component:
    """The signed-in operator, their role, and Sign out (on phones: the name and Sign out)."""
    return rx.cond(
        AuthState.signed_in,
        rx.hstack(
            rx.icon("circle-user", size=16, class_name="current-user-icon"),
            rx.text(AuthState.user_name, size="2", weight="medium", id="current-user",
                    class_name="current-user-name", title=AuthState.user_name),
            rx.badge(AuthState.role, variant="soft", color_scheme="gray", id="current-role",
                     class_name="current-user-role"),
            rx.button("Sign out", variant="ghost", size="1", on_click=AuthState.logout,
                      id="sign-out"),
            align="center", spacing="2"),
    )


def header(active_route: str, status: rx.Component | None = None) -> rx.Component:
    """The top bar: "Observatory", the navigation, and a status slot on the right.

    One line from 1024 px; below, the navigation takes a second line, and phones keep the
    logo, the status, the user's name and Sign out (assets/layout.css).
    """
    return rx.el.header(
        rx.box(
            rx.hstack(
                rx.center(rx.icon("radar", size=18, color="white"),
                          width="30px", height="30px", border_radius="8px",
                          background=rx.color("accent", 9), role="img", aria_label="Observatory"),
                rx.heading("Observatory", size="4", weight="bold",
                           class_name="header-brand-name"),
                rx.separator(orientation="vertical", size="1", height="20px",
                             class_name="header-separator"),
                align="center",
                spacing="3",
                class_name="header-brand",
            ),
            rx.el.nav(*(_nav_link(item, item.route == active_route) for item in NAV),
                      aria_label="Main", id="main-nav", class_name="main-nav"),
            rx.box(status or rx.fragment(), _user_menu(), class_name="header-aside"),
            class_name="page-header-bar",
        ),
        id="page-header",
        border_bottom=f"1px solid {rx.color('gray', 5)}",
        background=rx.color("gray", 1),
        position="sticky",
        top="0",
        z_index="10",
    )


def shell(active_route: str, *content: rx.Component,
          status: rx.Component | None = None) -> rx.Component:
    """Header plus a centred main column."""
    return rx.box(
        header(active_route, status),
        rx.el.main(*content, class_name="page-main"),
        min_height="100vh",
        background=rx.color("gray", 2),
    )
