"""The console's two server-rendered pages; everything live is filled in by static/console.js."""

from __future__ import annotations

from html import escape

from pushgw.settings import Settings

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="{base}/static/console.css"></head>"""


def login_page(base: str, error: str = "") -> str:
    alert = f'<p class="error" id="login-error" role="alert">{escape(error)}</p>' if error else ""
    return (
        _HEAD.format(title="pushgw console: log in", base=escape(base))
        + f"""
<body class="login"><main>
<h1>pushgw console</h1>
<form method="post" action="{escape(base)}/login" id="login" autocomplete="off">
  <label>App id <input name="app_id" id="app-id" required autofocus></label>
  <label>Master key <input name="master_key" id="master-key" type="password" required></label>
  <button type="submit">Log in</button>
  {alert}
</form>
<p class="hint">The app's master key, as configured in [[apps]]; it is checked like a push request's.</p>
</main></body></html>"""
    )


def console_page(base: str, app_id: str, csrf: str, settings: Settings) -> str:
    data = (
        f'data-base="{escape(base)}" data-csrf="{escape(csrf)}" '
        f'data-poll-ms="{settings.console.poll_interval_ms}"'
    )
    return (
        _HEAD.format(title=f"pushgw console: {escape(app_id)}", base=escape(base))
        + f"""
<body {data}>
<header><h1>pushgw console</h1><span id="app">{escape(app_id)}</span>
<span id="updated" class="muted"></span>
<form method="post" action="{escape(base)}/logout"><input type="hidden" name="csrf" value="{escape(csrf)}">
<button type="submit" id="logout">Log out</button></form></header>
<main>
<section id="pushes-panel"><h2>Recent pushes</h2>
<table id="pushes"><thead><tr><th>Push</th><th>Status</th><th>Created</th><th>Audience</th>
<th>Sent</th><th>Failed</th><th>Progress</th><th>By type</th><th>Failed by reason</th></tr></thead>
<tbody></tbody></table><p id="no-pushes" class="muted" hidden>No pushes yet.</p></section>
<div class="side">
<section id="test-push-panel"><h2>Send a test push</h2>
<form id="test-push">
  <label><input type="radio" name="audience" value="channels" checked> Channels</label>
  <label><input type="radio" name="audience" value="where"> Where (JSON)</label>
  <input id="test-channels" name="channels" placeholder="news, sports">
  <textarea id="test-where" name="where" rows="3" placeholder='{{"deviceType": "ios"}}' hidden></textarea>
  <input id="test-alert" name="alert" placeholder="Alert text" required>
  <button type="submit" id="test-send">Send</button>
  <p id="test-push-result" role="status"></p>
</form></section>
<section id="queues-panel"><h2>Queues</h2><table id="queues"><tbody></tbody></table>
<p id="queues-note" class="muted"></p></section>
<section id="ppns-panel"><h2>PPNS devices</h2><p><span id="ppns-connected">…</span> connected</p>
<p id="ppns-known" class="muted"></p><p id="ppns-note" class="muted"></p></section>
<section id="credentials-panel"><h2>Credentials</h2><ul id="credentials"></ul>
<p class="muted">Offline checks, as <code>pushgw doctor</code> runs them.</p></section>
</div></main>
<script src="{escape(base)}/static/console.js"></script>
</body></html>"""
    )
