"""The evaluate card's word heatmaps show untrusted review texts: rendered by Metaflow's card page in headless
Chromium, a review full of HTML and Markdown shows as the text it is, coloured, and nothing in it runs or links."""
import re
from types import SimpleNamespace

import pytest

from flowkit.cards.explanations import explanations_section, heatmap_html, inert
from tests import browser

pytestmark = pytest.mark.flow

HOSTILE = ('<script>document.body.setAttribute("data-pwned", "script")</script> great '
           '<img src=x onerror="document.title=\'pwned\'"> [click](javascript:alert(1)) **bold** `code` '
           '&amp; <b>awful</b> _x_ #1 | a |')


def words_of(text: str) -> list[dict]:
    """Whitespace-separated words with offsets and a score each (great +, awful -), as explain_texts gives."""
    out = []
    for match in re.finditer(r"\S+", text):
        score = 1.5 if "great" in match.group() else -1.0 if "awful" in match.group() else 0.1
        out.append({"text": match.group(), "start": match.start(), "end": match.end(), "score": score})
    return out


def explained(text: str) -> dict:
    review = {"row": 3, "kind": "error", "label": 0, "predicted": 1, "probability_positive": 0.91, "text": text,
              "words": words_of(text), "tokens": [], "delta": 0.0012, "logit_difference": 2.3,
              "reference_logit_difference": 0.1}
    return {"n_steps": 50, "seconds_per_review": 0.2, "max_abs_delta": 0.0012, "reviews": [review]}


def test_inert_text_has_no_markup_characters_left():
    made = inert(HOSTILE)
    assert not set("<>[]()*`_#|\"'") & set(made.replace("&#", "").replace(";", ""))
    import html

    assert html.unescape(made) == " ".join(HOSTILE.split())  # the browser shows exactly the review
    page = heatmap_html(explained(HOSTILE)["reviews"][0])
    assert page.count("<span ") == len(words_of(HOSTILE)) and "<script" not in page and "<img" not in page


@pytest.mark.skipif(browser.chromium() is None, reason=browser.INSTALL_HINT)
def test_a_hostile_review_renders_inert_in_the_card(tmp_path):
    from metaflow.plugins.cards.card_modules.basic import BlankCard

    components = explanations_section(explained(HOSTILE))
    card = BlankCard(components=components).render(SimpleNamespace(pathspec="ReviewFlow/1/evaluate/2"))
    page = tmp_path / "card.html"
    page.write_text(card)
    dom = browser.dom(page.as_uri(), tmp_path / "profile")
    text = browser.visible_text(dom)
    assert "Which words drove the predictions" in text
    assert " ".join(HOSTILE.split()) in text  # shown as written, every character
    assert "background-color" not in text and "<span" not in text  # the heatmap's own markup is markup
    assert "strongest: great +1.50, <b>awful</b> -1.00," in text and "&lt;" not in text  # escaped exactly once
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # the script did not run
    assert "<title>pwned</title>" not in dom
    assert not re.search(r"<img[^>]*onerror", dom) and not re.search(r"<script>document", dom)
    assert 'href="javascript' not in dom and "<strong>bold</strong>" not in dom and "<code>code</code>" not in dom
    assert re.search(r'<span style="background-color: rgba\(22, 163, 74, 0\.850\);[^>]*>great</span>', dom)
    assert re.search(r'<span style="background-color: rgba\(220, 38, 38, 0\.567\);[^>]*>&lt;b&gt;awful&lt;/b&gt;', dom)
    png = browser.screenshot(page.as_uri(), tmp_path / "card.png", tmp_path / "profile", window=(1280, 700))
    drawn = browser.ink(png)
    assert drawn["drawn_share"] > 0.01 and drawn["colours"] > 50, drawn
