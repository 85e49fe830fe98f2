"""Parse localization: `alert-xx`/`title-xx` picked by the `localeIdentifier` prefix (src/Push/utils.js)."""

from __future__ import annotations

from typing import Any

_LOCALIZED = ("alert-", "title-")


def locales_in(data: dict[str, Any]) -> list[str]:
    """Every suffix after `alert-` or `title-`, de-duplicated, in key order."""
    found: list[str] = []
    for key in data:
        for prefix in _LOCALIZED:
            if key.startswith(prefix) and key[len(prefix) :] not in found:
                found.append(key[len(prefix) :])
    return found


def choose_locale(locales: list[str], locale_identifier: str | None) -> str | None:
    """The first locale the identifier starts with (case-sensitive: `fr` matches `fr-CA`), else None."""
    if not locale_identifier:
        return None
    return next((locale for locale in locales if locale_identifier.startswith(locale)), None)


def localized(data: dict[str, Any], locale: str | None) -> dict[str, Any]:
    """`data` for one locale: alert/title replaced by truthy localized values, every locale key removed."""
    result = {key: value for key, value in data.items() if not key.startswith(_LOCALIZED)}
    if locale is not None:
        for field in ("alert", "title"):
            value = data.get(f"{field}-{locale}")
            if value:
                result[field] = value
    return result


class Localizer:
    """Per-push cache: one payload per locale, computed once however many devices share it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self._locales = locales_in(data)
        self._payloads: dict[str | None, dict[str, Any]] = {}
        self._by_identifier: dict[str | None, dict[str, Any]] = {}  # a fan-out has few distinct identifiers

    def payload_for(self, locale_identifier: str | None) -> dict[str, Any]:
        payload = self._by_identifier.get(locale_identifier)
        if payload is None:
            locale = choose_locale(self._locales, locale_identifier)
            if locale not in self._payloads:
                self._payloads[locale] = localized(self._data, locale)
            payload = self._by_identifier[locale_identifier] = self._payloads[locale]
        return payload
