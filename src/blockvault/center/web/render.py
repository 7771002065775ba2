"""Rendering a dashboard page: Jinja2 templates with autoescaping, given the
request's principal and its CSRF token so every form can carry it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

__all__ = ["TEMPLATES", "page"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered for this request. ``principal`` and ``csrf`` are set when
    someone is logged in (``auth.require`` stores the principal on the request)."""
    principal = getattr(request.state, "principal", None)
    csrf = getattr(request.state, "csrf", None)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"principal": principal, "csrf": csrf, **context},
        status_code=status_code,
    )
