"""The web console in a real browser (Debian's Chromium, Selenium) on a real stack: log in
through ``echoctl console``'s one-time URL, see the fleet and a dataflow's tasks on their
devices with labelled edges, migrate a task from the page and watch it move (live, no
reload), check a spec in the editor, and see that a viewer gets no action. Screenshots:
``artifacts/console/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.support.ui import Select

from echo_cli.devstack.platform import AgentSpec, Platform
from tests.conftest import PlatformFactory
from tests.harness.api import Api
from tests.harness.browser import chromium, click, css, rendered, screenshot, snapshot, wait_for

pytestmark = pytest.mark.e2e

ECHOCTL = Path(sys.executable).parent / "echoctl"
FLEET = (
    AgentSpec("edge-1", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
)


def spec(out: Path) -> dict[str, Any]:
    return {
        "name": "console-demo",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": 10**9, "rate": 50},
                "placement": {"device": "edge-1"},
            },
            {"id": "pass", "operator": "core.passthrough", "placement": {"tier": "fog"}},
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "pass"}, {"from": "pass", "to": "sink"}],
    }


def login_url(p: Platform, token: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env.update(ECHO_API_URL=p.api_url, ECHO_TOKEN=token)
    if p.brokers.bundle is not None:
        env["ECHO_CA_FILE"] = str(p.brokers.bundle.ca_file)
    r = subprocess.run(
        [str(ECHOCTL), "console", "--url", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip().splitlines()[-1]
    assert url.startswith(f"{p.api_url}/ui/login?code="), r.stdout
    return url


def server_cert(p: Platform) -> Path | None:
    return p.brokers.bundle.server.cert if p.brokers.bundle is not None and p.api_tls else None


def test_console(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    p, api = platform_factory(FLEET)
    df_id = api.submit(spec(tmp_path / "out.jsonl"))
    df = api.wait_state(df_id, "running", timeout=60)
    operator = api.create_token("operator", name="console operator")
    viewer = api.create_token("viewer", name="console viewer")

    with chromium(server_cert(p)) as b:
        # 1. the one-time URL lands on the dataflow's page, signed in
        url = login_url(p, operator["token"], "--dataflow", df_id)
        b.get(url)
        rendered(b)
        assert b.current_url == f"{p.api_url}/ui/dataflows/{df_id}"
        assert css(b, "#role")[0].get_attribute("data-role") == "operator"
        cookie = b.get_cookie("echo_console")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert b.execute_script("return document.cookie") == ""  # not readable by scripts

        # each task in its device's lane, coloured by state; edges labelled
        drawn = {g["data-task"]: g["data-device"] for g in snapshot(b, "g.task", "data-task", "data-device")}
        lanes = snapshot(b, "g.lane", "data-device", "data-tier")
        for t in df["tasks"]:
            assert drawn.get(t["id"]) == t["device"], (t["id"], drawn)
            assert t["device"] in {lane["data-device"] for lane in lanes}, f"no lane for {t['device']}"
        tiers = [lane["data-tier"] for lane in lanes]
        assert tiers == sorted(tiers, key=["edge", "fog", "cloud"].index), tiers
        labels = {e["data-edge"]: e["text"] for e in snapshot(b, "text.edge-label", "data-edge")}
        assert set(labels) == {"gen->pass", "pass->sink"}, labels
        for edge in df["edges"]:
            text = labels[f"{edge['from']}->{edge['to']}"]
            assert text.startswith(f"stream · {edge['transport'].upper()}"), text
        wait_for(  # live records/s on the edges (the generator emits 50/s)
            b,
            lambda b: all(not e["text"].endswith(" 0/s") for e in snapshot(b, "text.edge-label")),
            20,
            "the edge labels never showed a rate",
        )
        assert df["trace_id"] and snapshot(b, "#df-trace")[0]["text"] == df["trace_id"]

        # the placement explanation on click
        click(b, "g.task[data-task='pass']")
        wait_for(b, lambda b: css(b, "#placement-reason"), 5, "no placement panel")
        assert snapshot(b, "#placement-reason")[0]["text"] not in ("", "no placement explanation")
        screenshot(b, "dataflow")

        # 2. migrate a task from the page, see it move without reloading
        before = snapshot(b, "g.task[data-task='pass']", "data-device")[0]["data-device"]
        target = "fog-2" if before == "fog-1" else "fog-1"
        b.execute_script("window.__sameDocument = true")
        # the side panel re-renders with every live update: the picked target must survive it
        wait_for(b, lambda b: Select(css(b, "#target")[0]).select_by_value(target) or True, 10, "no #target")
        b.execute_script("document.getElementById('target').dataset.old = '1'")
        wait_for(  # a live update re-drew the panel (a new <select>) and kept the pick
            b,
            lambda b: (
                b.execute_script(
                    "const t = document.getElementById('target'); return t && !t.dataset.old && t.value"
                )
                == target
            ),
            20,
            "the picked target did not survive a live re-render",
        )
        click(b, "#migrate")
        wait_for(
            b,
            lambda b: css(b, f"g.task[data-task='pass'][data-device='{target}'][data-state='running']"),
            45,
            f"the task did not show as running on {target}",
        )
        wait_for(
            b,
            lambda b: css(b, "#migrations tr[data-task='pass'][data-state='completed']"),
            30,
            "the migration did not show as completed",
        )
        downtime = snapshot(b, "#migrations tr[data-task='pass'][data-state='completed'] .downtime")
        assert downtime and downtime[0]["text"].endswith(" ms"), downtime
        assert b.execute_script("return window.__sameDocument === true"), "the page reloaded"
        wait_for(b, lambda b: css(b, "#events tr[data-kind='migrated']"), 15, "no migrated event")
        screenshot(b, "dataflow-migrated")
        assert api.dataflow(df_id)["tasks"][1]["device"] == target

        # 3. the devices page lists the fleet by tier
        b.get(f"{p.api_url}/ui/devices")
        rendered(b)
        for a in FLEET:
            row = snapshot(b, f"section[data-tier='{a.tier}'] tr[data-device='{a.device_id}']", "data-status")
            assert row and row[0]["data-status"] == "online", a.device_id
        screenshot(b, "devices")

        # 4. the spec editor shows problems at their line
        b.get(f"{p.api_url}/ui/submit")
        rendered(b)
        box = css(b, "#spec")[0]
        box.clear()
        box.send_keys("name: broken\ntasks:\n  - id: a\n    operator: io.generate\n")
        box.send_keys("    placement: {tier: moon}\nedges: []\n")
        css(b, "#check")[0].click()
        wait_for(b, lambda b: css(b, "#problems li"), 10, "no problems listed")
        lines = {li.get_attribute("data-line") for li in css(b, "#problems li")}
        assert "5" in lines, [li.text for li in css(b, "#problems li")]
        assert css(b, "#gutter .bad[data-line='5']")
        screenshot(b, "submit-errors")

        # 5. friendly 404s
        b.get(f"{p.api_url}/ui/dataflows/no-such-dataflow")
        assert "There is no dataflow no-such-dataflow" in css(b, "main.notfound")[0].text
        b.get(f"{p.api_url}/ui/devices/no-such-device")
        assert "There is no device no-such-device" in css(b, "main.notfound")[0].text
        screenshot(b, "not-found")

        # 6. a used code: back to the login form, with the reason
        b.delete_all_cookies()
        b.get(url)
        reason = css(b, ".login-reason")
        assert reason and "already used" in reason[0].text, b.page_source[:500]
        b.get(f"{p.api_url}/ui/login?code=not-a-real-code")
        assert "unknown or too old" in css(b, ".login-reason")[0].text
        screenshot(b, "login-used-code")

        # 7. a viewer (token typed into the form) sees no action
        b.get(f"{p.api_url}/ui/dataflows/{df_id}")  # no session: to the login form
        wait_for(b, lambda b: css(b, "#token"), 10, "no login form")
        css(b, "#token")[0].send_keys(viewer["token"])
        css(b, "main.login button[type=submit]")[0].click()
        rendered(b)
        assert b.current_url == f"{p.api_url}/ui/dataflows/{df_id}"
        assert css(b, "#role")[0].get_attribute("data-role") == "viewer"
        click(b, "g.task[data-task='gen']")
        wait_for(b, lambda b: css(b, "#placement-reason"), 5, "no placement panel")
        assert not css(b, "main button:not(#logout)"), [e.text for e in css(b, "main button")]
        assert not css(b, "#migrate, #stop, #rebalance, a[href='/ui/submit']")
        screenshot(b, "viewer")

    # the viewer's session cannot change anything, even by hand
    r = api.http.post(
        f"/api/v1/dataflows/{df_id}/rebalance", headers={"Authorization": f"Bearer {viewer['token']}"}
    )
    assert r.status_code == 403


def test_console_session_cookie_needs_csrf(platform: tuple[Platform, Api]) -> None:
    """A changing call made with the session cookie but without the CSRF header is refused
    (another site's page could send the cookie, never the header)."""
    p, _ = platform
    url = login_url(p, p.admin_token)

    with httpx.Client(verify=p.api_verify, follow_redirects=False) as c:
        r = c.get(url)
        assert r.status_code == 303, r.text
        sid = r.cookies["echo_console"]
        cookies = {"echo_console": sid}
        who = c.get(f"{p.api_url}/api/v1/console/session", cookies=cookies)
        assert who.status_code == 200 and who.json()["role"] == "admin"
        csrf = who.json()["csrf"]
        bad = c.post(f"{p.api_url}/api/v1/tokens", json={"role": "viewer"}, cookies=cookies)
        assert bad.status_code == 403 and "X-ECHO-CSRF" in bad.json()["detail"]
        good = c.post(
            f"{p.api_url}/api/v1/tokens",
            json={"role": "viewer"},
            cookies=cookies,
            headers={"X-ECHO-CSRF": csrf},
        )
        assert good.status_code == 201, good.text
        # logging out ends the session
        out = c.post(f"{p.api_url}/ui/logout", cookies=cookies)
        assert out.status_code == 303
        assert c.get(f"{p.api_url}/api/v1/console/session", cookies=cookies).status_code == 401
