"""Parse localization (contract §11): locale list, prefix match, key stripping."""

from __future__ import annotations

from workers.localize import Localizer, choose_locale, locales_in, localized

DATA = {"alert-fr": "Bonjour", "alert": "Hello", "alert-en-US": "Hi", "title-fr": "Titre", "badge": 1}


def test_locales_in_key_order_without_duplicates() -> None:
    assert locales_in(DATA) == ["fr", "en-US"]


def test_first_matching_prefix_wins_case_sensitively() -> None:
    assert choose_locale(["fr", "en-US"], "fr-CA") == "fr"
    assert choose_locale(["fr", "en-US"], "en-US") == "en-US"
    assert choose_locale(["fr"], "FR-fr") is None
    assert choose_locale(["fr"], None) is None


def test_localized_payload_replaces_truthy_values_and_strips_every_locale_key() -> None:
    assert localized(DATA, "fr") == {"alert": "Bonjour", "badge": 1, "title": "Titre"}
    assert localized(DATA, None) == {"alert": "Hello", "badge": 1}
    assert localized({"alert": "Hello", "alert-de": ""}, "de") == {"alert": "Hello"}


def test_localizer_caches_one_payload_per_locale() -> None:
    localizer = Localizer(DATA)
    assert localizer.payload_for("fr-FR") is localizer.payload_for("fr-CA")
    assert localizer.payload_for("de-DE") == {"alert": "Hello", "badge": 1}
