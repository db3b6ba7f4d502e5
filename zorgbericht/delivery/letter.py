"""The patient letter: a printable A4 PDF with the link, a QR code of it and the steps."""

from __future__ import annotations

import io
from datetime import datetime

import segno
from fpdf import FPDF

from zorgbericht.delivery.service import format_moment

TEXT = {
    "nl": {
        "title": "Uw medische beelden online bekijken",
        "intro": "{institution} heeft medische beelden met u gedeeld. U kunt ze 14 dagen lang "
        "bekijken en downloaden via de link hieronder of door de QR-code te scannen.",
        "bsn": "Laatste 3 cijfers BSN van de patiënt: {bsn}",
        "need": "Wat heeft u nodig?",
        "need_items": [
            "de geboortedatum van de patiënt",
            "de mobiele telefoon waarvan u het nummer aan ons gaf (u krijgt een sms-code)",
        ],
        "steps_title": "Zo werkt het",
        "steps": [
            "Open de link of scan de QR-code met uw telefoon.",
            "Ga akkoord met de gebruiksvoorwaarden.",
            "Vul de geboortedatum van de patiënt in (dd-mm-jjjj).",
            "Typ de 6-cijferige code uit de sms.",
            "Bekijk de beelden, of download ze: JPEG voor uzelf, DICOM voor een arts.",
        ],
        "link": "Link",
        "code": "Code",
        "until": "De link werkt tot {expires}. Daarna worden de beelden verwijderd.",
        "confidential": "Deze brief bevat vertrouwelijke informatie. Bewaar hem zorgvuldig en "
        "geef hem alleen aan wie de beelden mag zien.",
        "help": "Werkt de link niet meer? Vraag {institution} om de beelden opnieuw te delen.",
    },
    "en": {
        "title": "View your medical images online",
        "intro": "{institution} has shared medical images with you. For 14 days you can view "
        "and download them through the link below or by scanning the QR code.",
        "bsn": "Last 3 digits of the patient's citizen service number (BSN): {bsn}",
        "need": "What you need",
        "need_items": [
            "the patient's date of birth",
            "the mobile phone whose number you gave us (you receive a text message code)",
        ],
        "steps_title": "How it works",
        "steps": [
            "Open the link or scan the QR code with your phone.",
            "Accept the terms of use.",
            "Enter the patient's date of birth (dd-mm-yyyy).",
            "Type the 6-digit code from the text message.",
            "View the images, or download them: JPEG for yourself, DICOM for a doctor.",
        ],
        "link": "Link",
        "code": "Code",
        "until": "The link works until {expires}. After that the images are deleted.",
        "confidential": "This letter contains confidential information. Keep it safe and give "
        "it only to someone who may see the images.",
        "help": "Link no longer working? Ask {institution} to share the images again.",
    },
}


def render_letter(
    *,
    institution: str,
    url: str,
    code: str,
    language: str,
    expires_at: datetime,
    bsn_last3: str | None,
) -> bytes:
    """Build the letter as PDF bytes (A4, core fonts, no patient data beyond 3 BSN digits)."""
    t = TEXT[language]
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_title(t["title"])
    pdf.set_creator("zorgbericht")
    pdf.set_margins(22, 20, 22)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 11)
    pdf.set_text_color(11, 79, 138)
    pdf.cell(0, 6, institution, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    pdf.set_text_color(27, 42, 58)
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 9, t["title"], new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _paragraph(pdf, t["intro"].format(institution=institution))
    unknown = "Onbekend" if language == "nl" else "Unknown"
    _paragraph(pdf, t["bsn"].format(bsn=bsn_last3 or unknown))
    _link_block(pdf, url, code, t)
    _list(pdf, t["need"], t["need_items"], numbered=False)
    _list(pdf, t["steps_title"], t["steps"], numbered=True)
    _paragraph(pdf, t["until"].format(expires=format_moment(expires_at, language)), bold=True)
    pdf.set_font("Helvetica", "", 9)
    pdf.set_text_color(74, 90, 106)
    pdf.multi_cell(
        0,
        4.5,
        t["confidential"] + " " + t["help"].format(institution=institution),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    return bytes(pdf.output())


def _paragraph(pdf: FPDF, text: str, bold: bool = False) -> None:
    pdf.set_font("Helvetica", "B" if bold else "", 11)
    pdf.multi_cell(0, 5.5, text, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _link_block(pdf: FPDF, url: str, code: str, t: dict) -> None:  # type: ignore[type-arg]
    qr = io.BytesIO()
    segno.make(url, error="m").save(qr, kind="png", scale=10, border=2)
    qr.seek(0)
    top = pdf.get_y() + 2
    pdf.image(qr, x=pdf.l_margin, y=top, w=45, h=45)
    left = pdf.l_margin + 52
    pdf.set_xy(left, top + 6)
    pdf.set_font("Helvetica", "", 10)
    pdf.cell(0, 5, t["link"], new_x="LEFT", new_y="NEXT")
    pdf.set_font("Courier", "B", 10)
    pdf.multi_cell(pdf.epw - 52, 5, url, new_x="LEFT", new_y="NEXT")
    pdf.set_xy(left, pdf.get_y() + 3)
    pdf.set_font("Helvetica", "", 10)
    pdf.cell(0, 5, t["code"], new_x="LEFT", new_y="NEXT")
    pdf.set_x(left)
    pdf.set_font("Courier", "B", 16)
    pdf.cell(0, 8, code, new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(top + 50)


def _list(pdf: FPDF, title: str, items: list[str], numbered: bool) -> None:
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 7, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    for index, item in enumerate(items, start=1):
        pdf.cell(8, 5.5, f"{index}." if numbered else "-")
        pdf.multi_cell(0, 5.5, item, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
