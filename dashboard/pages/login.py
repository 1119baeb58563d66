"""The login page (`/login`): name and password; the session then lasts a week or until
the operator signs out."""

from __future__ import annotations

import reflex as rx

from dashboard.state.session import AuthState

TITLE = "Sign in · Observatory"


def login_page() -> rx.Component:
    return rx.center(
        rx.card(
            rx.form(
                rx.vstack(
                    rx.hstack(
                        rx.center(rx.icon("radar", size=18, color="white"), width="30px",
                                  height="30px", border_radius="8px",
                                  background=rx.color("accent", 9)),
                        rx.heading("Observatory", size="5", weight="bold"),
                        align="center", spacing="3"),
                    rx.text("Sign in to the operations console.", size="2", color_scheme="gray"),
                    rx.el.label("User name", html_for="login-name", class_name="rt-Text rt-r-size-2"),
                    rx.input(id="login-name", name="name", auto_complete="username",
                             auto_focus=True, required=True, width="100%"),
                    rx.el.label("Password", html_for="login-password",
                                class_name="rt-Text rt-r-size-2"),
                    rx.input(id="login-password", name="password", type="password",
                             auto_complete="current-password", required=True, width="100%"),
                    rx.cond(
                        AuthState.login_error != "",
                        rx.callout(AuthState.login_error, icon="triangle-alert", color_scheme="red",
                                   role="alert", id="login-error", width="100%"),
                    ),
                    rx.button("Sign in", type="submit", loading=AuthState.signing_in,
                              width="100%", id="login-submit"),
                    spacing="3", width="100%",
                ),
                on_submit=AuthState.login,
                reset_on_submit=False,
            ),
            width="100%", max_width="360px", size="3",
        ),
        as_="main",
        min_height="100vh",
        padding="1em",
        background=rx.color("gray", 2),
    )
