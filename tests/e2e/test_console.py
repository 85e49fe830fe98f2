"""The operator console in headless Chromium against a real `pushgw dev`: login, live progress, test push."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.dev_gateway import DEV_APP_ID, DEV_MASTER_KEY, DevGateway
from tests.fixtures.waiting import until

AUDIENCE = 3000
FAILING_PREFIX = "fcm-token-1"  # the recording provider fails these Android tokens with BadDeviceToken


def log_in(page: Page, dev: DevGateway, master_key: str = DEV_MASTER_KEY) -> None:
    page.goto(f"{dev.url}/console")
    page.locator("#app-id").fill(DEV_APP_ID)
    page.locator("#master-key").fill(master_key)
    page.get_by_role("button", name="Log in").click()


def send_push(dev: DevGateway, body: dict[str, Any]) -> str:
    headers = {"X-Parse-Application-Id": DEV_APP_ID, "X-Parse-Master-Key": DEV_MASTER_KEY}
    response = httpx2.post(f"{dev.url}/parse/push", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-parse-push-status-id"]


def screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


class TestLiveProgress:
    @pytest.fixture
    def dev_env(self) -> dict[str, Any]:
        # The recording provider with a latency, two sends in flight: a push of 3,000 takes seconds.
        return {
            "PUSHGW_RECORDING__TRANSPORTS": '["apns", "fcm"]',
            "PUSHGW_RECORDING__LATENCY_MS": 400,
            "PUSHGW_RECORDING__FAIL_TOKENS": json.dumps({FAILING_PREFIX: "failed:BadDeviceToken"}),
            "PUSHGW_WORKER__BATCH_SIZE": 250,
            "PUSHGW_WORKER__SEND_PREFETCH": 2,
        }

    def test_wrong_key_is_refused_and_the_right_key_logs_in(
        self, pushgw_dev: DevGateway, page: Page, tmp_path: Path
    ) -> None:
        log_in(page, pushgw_dev, master_key="not-the-key")
        expect(page.locator("#login-error")).to_have_text("Wrong app id or master key.")
        expect(page.locator("#login-error")).to_have_css("color", "rgb(207, 34, 46)")
        assert page.context.cookies() == []
        screenshot(page, tmp_path / "login-refused.png")

        log_in(page, pushgw_dev)
        expect(page.locator("#app")).to_have_text(DEV_APP_ID)
        expect(page.locator("#pushes-panel h2")).to_have_text("Recent pushes")
        expect(page.locator("#no-pushes")).to_be_visible()
        for panel in ("#queues-panel", "#ppns-panel", "#credentials-panel", "#test-push"):
            expect(page.locator(panel)).to_be_visible()
        expect(page.locator("#queues-note")).to_contain_text("n/a: memory://")
        expect(page.locator("#ppns-connected")).to_have_text("n/a")
        [cookie] = page.context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("pushgw_console", True, "Strict")
        assert cookie["path"] == "/console" and cookie["expires"] > 0
        assert DEV_MASTER_KEY not in cookie["value"] and DEV_MASTER_KEY not in page.url
        screenshot(page, tmp_path / "console-empty.png")

        page.get_by_role("button", name="Log out").click()
        expect(page.locator("#login")).to_be_visible()
        assert page.context.cookies() == []

    def test_push_row_counts_change_until_final(
        self, pushgw_dev: DevGateway, page: Page, tmp_path: Path
    ) -> None:
        pushgw_dev.seed(AUDIENCE, "everyone")
        failing = pushgw_dev.database["_Installation"].count_documents(
            {"deviceToken": {"$regex": f"^{FAILING_PREFIX}"}}
        )
        assert 0 < failing < AUDIENCE // 2
        log_in(page, pushgw_dev)
        expect(page.locator("#no-pushes")).to_be_visible()
        push_id = send_push(pushgw_dev, {"channels": ["everyone"], "data": {"alert": "big one"}})
        row = page.locator(f'#pushes tr[data-push-id="{push_id}"]')
        expect(row).to_be_visible()
        seen: list[tuple[str, int]] = []

        def final() -> bool:
            status, sent, failed = (
                row.locator(f"td.{name}").inner_text() for name in ("status", "sent", "failed")
            )
            if not seen or seen[-1] != (status, int(sent) + int(failed)):
                seen.append((status, int(sent) + int(failed)))
                if len(seen) == 2:
                    screenshot(page, tmp_path / "console-running.png")
            return status == "succeeded"

        until(final, timeout_s=90, interval_s=0.05, what="the push row to show succeeded")
        running = [done for status, done in seen if status == "running" and 0 < done < AUDIENCE]
        assert running, f"no intermediate progress seen: {seen}"
        assert seen[-1] == ("succeeded", AUDIENCE)
        expect(row.locator("td.sent")).to_have_text(str(AUDIENCE - failing))
        expect(row.locator("td.failed")).to_have_text(str(failing))
        expect(row.locator("td.per-reason")).to_have_text(f"BadDeviceToken {failing}")
        expect(row.locator("td.per-type")).to_have_text(
            f"sent: android {AUDIENCE // 2 - failing}, ios {AUDIENCE // 2}; failed: android {failing}"
        )
        expect(row.locator("td.audience")).to_have_text("channels: everyone")
        expect(row.locator("td.status")).to_have_css("color", "rgb(26, 127, 55)")  # green: succeeded
        expect(row.locator("td.progress")).to_contain_text(f"{AUDIENCE}/{AUDIENCE}")
        screenshot(page, tmp_path / "console-final.png")


def test_test_push_form_sends_a_push_that_appears_in_the_list(
    pushgw_dev: DevGateway, page: Page, tmp_path: Path
) -> None:
    pushgw_dev.seed(12, "console-test")
    log_in(page, pushgw_dev)
    page.locator("#test-channels").fill("console-test")
    page.locator("#test-alert").fill("from the form")
    page.get_by_role("button", name="Send").click()
    result = page.locator("#test-push-result")
    expect(result).to_contain_text("accepted: push ", timeout=10_000)
    push_id = result.get_attribute("data-push-id")
    assert push_id
    row = page.locator(f'#pushes tr[data-push-id="{push_id}"]')
    expect(row.locator("td.status")).to_have_text("succeeded", timeout=30_000)
    expect(row.locator("td.sent")).to_have_text("12")
    stored = pushgw_dev.database["_PushStatus"].find_one({"_id": push_id})
    assert json.loads(stored["payload"]) == {"alert": "from the form"}
    assert stored["source"] == "rest"  # the intake's own record, as for any push

    page.get_by_label("Where (JSON)").check()
    page.locator("#test-where").fill('{"channels": "console-test", "deviceType": "ios"}')
    page.get_by_role("button", name="Send").click()
    expect(result).to_contain_text("accepted: push ", timeout=10_000)
    second = result.get_attribute("data-push-id")
    assert second and second != push_id
    expect(page.locator(f'#pushes tr[data-push-id="{second}"] td.sent')).to_have_text("6", timeout=30_000)

    page.locator("#test-where").fill("[1]")
    page.get_by_role("button", name="Send").click()
    expect(result).to_have_text("rejected (HTTP 400): where must be a JSON object")

    # The emulators' credentials (dev's sandbox) are checked and shown.
    credentials = page.locator("#credentials li")
    expect(credentials.filter(has_text="apps[pushgw-dev].apns[0]")).to_contain_text("signs an ES256 JWT")
    expect(credentials.filter(has_text="apps[pushgw-dev].fcm")).to_contain_text("OK ")
    screenshot(page, tmp_path / "console-test-push.png")


def test_json_endpoints_need_the_session_and_writes_the_csrf_token(
    pushgw_dev: DevGateway, page: Page
) -> None:
    for path in ("/console/api/pushes", "/console/api/overview"):
        response = httpx2.get(f"{pushgw_dev.url}{path}", timeout=10)
        assert response.status_code == 401, path
    anonymous = httpx2.post(f"{pushgw_dev.url}/console/api/test-push", json={"channels": "a"}, timeout=10)
    assert anonymous.status_code == 401
    forged = httpx2.get(
        f"{pushgw_dev.url}/console/api/pushes", cookies={"pushgw_console": "eyJ9.forged"}, timeout=10
    )
    assert forged.status_code == 401

    log_in(page, pushgw_dev)
    expect(page.locator("#app")).to_have_text(DEV_APP_ID)
    request = page.context.request
    body = {"audience": "channels", "channels": "a", "alert": "x"}
    no_token = request.post(f"{pushgw_dev.url}/console/api/test-push", data=body)
    assert no_token.status == 403
    csrf = page.locator("body").get_attribute("data-csrf")
    assert csrf
    cross_site = request.post(
        f"{pushgw_dev.url}/console/api/test-push", data=body,
        headers={"X-Pushgw-Csrf": csrf, "Origin": "https://evil.example"},
    )  # fmt: skip
    assert cross_site.status == 403
    accepted = request.post(
        f"{pushgw_dev.url}/console/api/test-push",
        data={"audience": "where", "where": '{"a": 1}', "alert": "y"},
        headers={"X-Pushgw-Csrf": csrf},
    )
    assert accepted.status == 200
    listed = request.get(f"{pushgw_dev.url}/console/api/pushes").json()
    assert [push["id"] for push in listed["pushes"]] == [accepted.json()["push_id"]]
    assert listed["pushes"][0]["target"] == 'where: {"a":1}'
    not_an_object = request.post(
        f"{pushgw_dev.url}/console/api/test-push",
        data={"audience": "where", "where": "[1]", "alert": "x"},
        headers={"X-Pushgw-Csrf": csrf},
    )
    assert (not_an_object.status, not_an_object.json()) == (400, {"error": "where must be a JSON object"})
    headers = request.get(f"{pushgw_dev.url}/console").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert DEV_MASTER_KEY not in pushgw_dev.process.output.split("Send a push:", 1)[-1].split("\n\n", 1)[-1]
