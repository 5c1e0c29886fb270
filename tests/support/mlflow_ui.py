"""What a user sees of a `main` run in the MLflow UI, read from the page rendered by headless Chromium."""

import re
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from modeldiff.views.describe import ui_route

# MLflow's UI asks the server for its signed-in user; a server without the auth app answers 404 (not ours)
MLFLOW_OWN_ERRORS = ("/ajax-api/2.0/mlflow/users/current",)
RATIO_COLUMNS = [f"ratio_{t}{s}" for t in ("PA_AB", "PA_BA", "PD_BA") for s in ("", "_lo", "_hi")]
TEXT = "document.body.innerText"


def _ours(problems: list[str]) -> list[str]:
    return [p for p in problems if not any(own in p for own in MLFLOW_OWN_ERRORS)]


def _go(browser, session: str, url: str):
    browser.send("Page.navigate", session, url=url)
    time.sleep(1)  # the single-page app swaps its route after the navigation returns


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def check_main_run_in_ui(browser, experiment_url: str, main_run_ids: list[str], out: Path) -> dict:
    """Open `experiment_url` (the link `main` prints) as a user would and check what the pages of its `main_run_ids`
    show; screenshots go to `out`. Returns {name: screenshot path}."""
    client = MlflowClient()
    runs = [client.get_run(r) for r in main_run_ids]
    exp = runs[0].info.experiment_id
    base = experiment_url.split("/#/")[0]
    session = browser.open("about:blank")
    browser.send("Target.setAutoAttach", session, autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
    browser.send(
        "Emulation.setDeviceMetricsOverride", session, width=2400, height=1200, deviceScaleFactor=1, mobile=False
    )
    shots = {}

    # the experiment opens on the runs table (the training view), listing the main runs
    assert experiment_url == f"{base}/{ui_route(exp)}", experiment_url
    _go(browser, session, experiment_url)
    for run in runs:
        browser.wait_js(session, f"{TEXT}.includes({run.info.run_name!r})", 90, f"run {run.info.run_name} in the table")
    # its ratio metrics are columns a user can add; added, the table shows each main run's value
    browser.js(session, "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Columns').click()")
    for col in RATIO_COLUMNS:
        browser.wait_js(session, f"{TEXT}.split('\\n').includes({col!r})", 30, f"metric {col} among the columns")
    browser.js(
        session,
        "[...document.querySelectorAll('span')].find(e => e.childElementCount === 0 && "
        "e.textContent.trim() === 'ratio_PA_AB').click()",
    )
    browser.send(
        "Input.dispatchKeyEvent", session, type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27
    )
    browser.wait_js(
        session,
        "[...document.querySelectorAll('[role=columnheader]')].some(h => h.innerText.trim() === 'ratio_PA_AB')",
        30,
        "the ratio_PA_AB column",
    )
    cells = _numbers(
        browser.js(session, "[...document.querySelectorAll('[role=gridcell]')].map(c => c.innerText).join(' ')")
    )
    for run in runs:
        want = run.data.metrics["ratio_PA_AB"]
        assert any(abs(x - want) <= 5e-3 * max(1.0, abs(want)) for x in cells), (want, cells)
    shots["experiment"] = browser.screenshot(session, out / "experiment.png")

    # a main run's page and its normalize run's: the description states the ratio with its intervals in words
    for run in runs[:1]:
        normalize = run.data.tags["modeldiff.run.normalize"]
        ratio = [run.data.metrics[f"ratio_{t}"] for t in ("PD_AB", "PA_AB", "PA_BA", "PD_BA")]
        stated = "PD_A→B : PA_A→B : PA_B→A : PD_B→A = 1.000 : " + " : ".join(f"{r:.3f} [" for r in ratio[1:])
        for run_id, name in ((run.info.run_id, "main_run"), (normalize, "normalize_run")):
            _go(browser, session, f"{base}/{ui_route(exp, run_id)}")
            browser.wait_js(session, f"{TEXT}.includes('PD_A→B : PA_A→B')", 60, f"the ratio on {name}'s page")
            text = browser.js(session, TEXT)
            # each term with its interval ("1.203 [0.732, 1.553]"), and a sentence per term
            assert all(part in text for part in stated.split(" : ")), (stated, text[:2000])
            assert "95% intervals" in text and "on A's likely inputs, B assigns the lower NLL" in text
            shots[name] = browser.screenshot(session, out / f"{name}.png")

        # the overlay plot loads inside the UI's artifact view
        _go(browser, session, f"{base}/#/experiments/{exp}/runs/{normalize}/artifacts/plots/D_overlay.png")
        browser.wait_js(
            session,
            "[...document.querySelectorAll('img')].some(i => i.src.startsWith('blob:') && i.naturalWidth > 200)",
            60,
            "plots/D_overlay.png in the artifact view",
        )
        shots["overlay"] = browser.screenshot(session, out / "overlay.png")

        # the token view of cross_eval A→B loads in the UI's (sandboxed, out-of-process) frame and runs its script
        cross_eval = run.data.tags["modeldiff.run.cross_eval_AB"]
        before = len(browser.events)
        _go(browser, session, f"{base}/#/experiments/{exp}/runs/{cross_eval}/artifacts/tokendiff/index.html")
        frame = None
        deadline = time.monotonic() + 60
        while frame is None and time.monotonic() < deadline:
            browser.js(session, "1")  # lets the events of the frame's attachment arrive
            frame = next(
                (
                    e["params"]["sessionId"]
                    for e in browser.events[before:]
                    if e["method"] == "Target.attachedToTarget" and e["params"]["targetInfo"]["type"] == "iframe"
                ),
                None,
            )
            time.sleep(0.5)
        assert frame, "the token view's frame never attached"
        browser.send("Runtime.enable", frame)
        browser.send("Log.enable", frame)
        browser.wait_js(frame, "window.tokendiffReady === true", 60, "the token view's script")
        assert browser.js(frame, "document.querySelectorAll('.tok').length") > 0
        assert browser.problems(frame) == []
        shots["token_view"] = browser.screenshot(session, out / "token_view.png")
    assert _ours(browser.problems(session)) == []
    return shots
