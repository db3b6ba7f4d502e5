"""Render the messages in ``mail_templates/``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

import mail_templates

FOLDER = Path(mail_templates.__file__).parent
UNKNOWN = {"nl": "Onbekend", "en": "Unknown"}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(FOLDER),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render(name: str, language: str, **context: object) -> Rendered:
    """Render ``name``/``language``: subject, text and HTML with the same context."""
    env = _environment()
    context = {"lang": language, **context}
    subject = env.get_template(f"{name}/{language}/subject.txt").render(context).strip()
    return Rendered(
        subject=subject,
        text=env.get_template(f"{name}/{language}/body.txt").render(context),
        html=env.get_template(f"{name}/{language}/body.html").render(subject=subject, **context),
    )
