"""JupyterLab in headless Chromium, as a learner sees it: the browser tests' machinery.

`JupyterLab` starts the project's own `jupyter lab` (from the venv running the tests) on a
free local port with a token, in a throwaway root that holds copies of the notebooks, with
fresh settings and workspaces (so nothing in the repository or in ~/.jupyter is read or
written). `chrome()` starts Debian's chromium through its chromedriver, headless, with
network features that would reach for the internet switched off. `Notebook` opens one
notebook, runs all its cells through JupyterLab's own command (`notebook:run-all-cells`,
the app being exposed with `--LabApp.expose_app_in_browser`), waits for the kernel, and
measures what each output drew.

Nothing here downloads anything: the browser and driver are Debian's packages
(`apt-get install chromium chromium-driver`), selenium comes from requirements-dev.txt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Outputs whose rendering the tests check, by the DOM they produce in JupyterLab 4:
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # ipywidgets: a .jupyter-widgets lumino widget
# What a real browser proves that a kernel cannot: a whole notebook runs in JupyterLab (one
# chapter proves it for all: WHOLE_NOTEBOOK, with a slider, 22 progress bars and 9 images),
# and JavaScript outputs draw (ipywidgets panels, circuitsvis pictures) and sliders move. The
# cells that draw those are tagged "interactive" in each chapter's source; every other chapter
# is run in the browser as those cells and what they need (`browser_copy`), not a third time
# whole after its grading and its lost-exercise grading. test_chapters.py checks, on each
# chapter's graded run, that the cells with such outputs are exactly the tagged ones.
WHOLE_NOTEBOOK = "01_superposition"
INTERACTIVE_TAG = "interactive"
CIRCUITSVIS_ID = "circuits-vis-"  # circuitsvis: <div id="circuits-vis-…"> that its React bundle fills

# JupyterLab's settings for the test server (a fresh settings folder: a learner's own
# ~/.jupyter is never read): don't ask about the news feed in a toast over the outputs.
SETTINGS = {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false"}}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} not found: `apt-get install chromium chromium-driver` (or `make test-browser`)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed in this environment: `make setup` (requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """`jupyter lab` serving `root` on 127.0.0.1 with a random token; a context manager."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log = root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def __enter__(self) -> JupyterLab:
        state = self.root.parent / f"{self.root.name}-jupyter"  # settings, workspaces, runtime files
        for sub in ("settings", "workspaces", "runtime", "config"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        for plugin, settings in SETTINGS.items():
            path = state / "settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        env = os.environ | {"JUPYTER_RUNTIME_DIR": str(state / "runtime"),
                            "JUPYTER_CONFIG_DIR": str(state / "config")}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={state / 'settings'}",
               f"--LabApp.workspaces_dir={state / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands as the menus do
               "--LabApp.news_url=None",  # no announcement feed from the internet
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.getuid() == 0:
            cmd.append("--allow-root")
        self._log = self.log.open("w")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise TimeoutError(f"jupyter lab did not answer in 120 s:\n{self.log.read_text()}")
            time.sleep(0.5)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url(f"api/{path}"), method=method)
        with urllib.request.urlopen(request, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self, notebook: str) -> None:
        """End the sessions (and so the kernels) of `notebook`."""
        for session in self.api("sessions"):
            if session.get("path") == notebook:
                self.api(f"sessions/{session['id']}", "DELETE")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # the server shuts its kernels down on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)  # its own session: the server and its kernels
                self.process.wait()
        self._log.close()


def chrome(profile: Path, width: int = 1400, height: int = 1000):
    """Headless Debian chromium driven by its chromedriver, with the browser console logged."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--disable-extensions",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    return driver


# ------------------------------------------------------------------ in the page
# Each snippet runs in the page through execute_script; `jupyterapp` is JupyterLab's app.

_PANEL = """
const app = window.jupyterapp;
if (!app) return {error: 'window.jupyterapp is missing (is --LabApp.expose_app_in_browser set?)'};
const panel = app.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext) return {error: 'no notebook is open'};
"""

_STATE = _PANEL + """
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = [];
panel.content.widgets.forEach((cell, index) => {
  if (cell.model.type !== 'code' || !cell.model.sharedModel.getSource().trim()) return;
  const outputs = cell.model.outputs.toJSON();
  cells.push({
    index: index,
    count: cell.model.executionCount,
    running: (cell.promptNode ? cell.promptNode.textContent : '').includes('*'),
    errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
    widgets: outputs.filter(o => o.data && o.data[arguments[0]]).length,
    circuitsvis: outputs.filter(o => o.data && String(o.data['text/html'] || '').includes(arguments[1])).length,
    images: outputs.filter(o => o.data && (o.data['image/png'] || o.data['image/jpeg'])).length,
  });
});
return {kernel: kernel ? kernel.status : null, ready: panel.sessionContext.isReady, cells: cells};
"""

# Every rendered output the tests measure, in the open notebook only, each scrolled into
# view first (JupyterLab skips the layout of cells far off screen), and marked
# data-browser-test="KIND-N" for its screenshot. Widgets nested in another widget (in an
# Output widget, say) belong to their top-level widget, and so do its pictures.
_RENDERED = _PANEL + """
const root = panel.content.node;
const cells = Array.from(root.querySelectorAll('.jp-Cell'));
const out = [];
const mark = (el, kind) => {
  el.scrollIntoView({block: 'center'});
  const r = el.getBoundingClientRect();
  const n = out.filter(o => o.kind === kind).length;
  el.setAttribute('data-browser-test', kind + '-' + n);
  const item = {kind: kind, marker: kind + '-' + n, width: r.width, height: r.height,
                cell: cells.indexOf(el.closest('.jp-Cell')), text: (el.innerText || '').slice(0, 200)};
  out.push(item);
  return item;
};
const topLevel = el => !el.parentElement.closest('.jupyter-widgets');
root.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').forEach(el => {
  // a tqdm bar is a widget too (text, progress bar, text): measured, not photographed
  if (topLevel(el)) mark(el, el.querySelector(':scope > .widget-hprogress') ? 'progress' : 'widget');
});
root.querySelectorAll('.jp-OutputArea-output div[id^="circuits-vis-"]').forEach(el => {
  // its script sits inside the div until React replaces it with the picture
  mark(el, 'circuitsvis').drawn = !!el.querySelector(':scope > :not(script)');
});
root.querySelectorAll('.jp-OutputArea-output img').forEach(el => {
  mark(el, 'image').natural = el.naturalWidth;
});
root.querySelectorAll('.jp-OutputArea-output .js-plotly-plot').forEach(el => mark(el, 'plotly'));
root.querySelectorAll('.jp-OutputArea-output').forEach(el => {
  // ipywidgets' own failure text, e.g. "Error displaying widget: model not found"
  if (/Error displaying widget|model not found/i.test(el.innerText || ''))
    out.push({kind: 'widget-error', cell: cells.indexOf(el.closest('.jp-Cell')), text: el.innerText.slice(0, 300)});
});
return out;
"""


# The first slider in a widget panel, and what the panel shows besides it: the readout, the
# text of its Output widgets and the pictures in them.
_SLIDER = _PANEL + """
const handle = panel.content.node.querySelector('.jp-OutputArea-output .widget-slider .noUi-handle');
if (!handle) return null;
handle.scrollIntoView({block: 'center'});
handle.setAttribute('data-browser-test', 'slider-handle');
const widget = handle.closest('.jp-OutputArea-output > .jupyter-widgets');
const slider = handle.closest('.widget-slider');
const outputs = Array.from(widget.querySelectorAll('.widget-output'));
return {
  readout: (slider.querySelector('.widget-readout') || {}).innerText,
  output: outputs.map(o => o.innerText).join('\\n'),
  images: outputs.flatMap(o => Array.from(o.querySelectorAll('img')).map(i => i.src.slice(-200))),
  panel: widget.getAttribute('data-browser-test'),
};
"""


@dataclass
class RunResult:
    seconds: float
    cells: list[dict]
    rendered: list[dict] = field(default_factory=list)

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.rendered if r["kind"] == kind]

    @property
    def errors(self) -> list[str]:
        return [f"cell {c['index']}: {e}" for c in self.cells for e in c["errors"]]

    @property
    def unexecuted(self) -> list[int]:
        return [c["index"] for c in self.cells if c["count"] is None or c["running"]]

    def expected(self, key: str) -> int:
        return sum(c[key] for c in self.cells)


class Notebook:
    """One notebook open in JupyterLab in the browser."""

    def __init__(self, driver, lab: JupyterLab, name: str):
        self.driver, self.lab, self.name = driver, lab, name

    def js(self, script: str, *args):
        result = self.driver.execute_script(script, *args)
        if isinstance(result, dict) and result.get("error"):
            raise RuntimeError(result["error"])
        return result

    def state(self) -> dict:
        return self.js(_STATE, WIDGET_VIEW, CIRCUITSVIS_ID)

    def open(self, timeout: float = 180) -> None:
        """Open the notebook, alone in a workspace of its own (so no tab from an earlier
        test is restored beside it), and wait until its kernel is started and idle."""
        workspace = Path(self.name).stem.replace("_", "-")
        self.driver.get(self.lab.url(f"lab/workspaces/{workspace}/tree/{self.name}"))
        self.wait(lambda: self._kernel_idle(), timeout, "the notebook to open and its kernel to start")

    def _kernel_idle(self) -> bool:
        try:
            state = self.state()
        except Exception:  # the app is still loading
            return False
        return state["ready"] and state["kernel"] == "idle"

    def run_all(self, timeout: float) -> RunResult:
        """Run all cells, as Run > Run All Cells does, and wait until every code cell ran
        (or one raised: JupyterLab then stops the rest)."""
        start = time.monotonic()
        self.js(_PANEL + "app.commands.execute('notebook:run-all-cells'); return {};")
        state: dict = {}

        def done() -> bool:
            nonlocal state
            state = self.state()
            if any(c["errors"] for c in state["cells"]):
                return not any(c["running"] for c in state["cells"])
            return state["kernel"] == "idle" and all(c["count"] is not None and not c["running"]
                                                     for c in state["cells"])

        self.wait(done, timeout, "every cell to run", poll=2)
        return RunResult(time.monotonic() - start, state["cells"])

    def measure(self, result: RunResult) -> RunResult:
        """Scroll to and measure every widget, circuitsvis picture, image and plotly plot."""
        time.sleep(1)  # let the last outputs lay out
        result.rendered = self.js(_RENDERED)
        return result

    def slider(self) -> dict | None:
        """The first slider's readout and its panel's outputs (None if the notebook has none)."""
        return self.js(_SLIDER)

    def move_slider(self, timeout: float = 60) -> tuple[dict, dict]:
        """Press the right arrow key on the first slider's handle, as a learner would, and
        wait until the panel's outputs change; returns what the panel showed before and after."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        before = self.slider()
        assert before is not None, f"{self.name} has no slider"
        handle = self.driver.find_element(By.CSS_SELECTOR, '[data-browser-test="slider-handle"]')
        handle.click()  # focus (a click on the handle itself does not move it)
        handle.send_keys(Keys.ARROW_RIGHT)
        after = before

        def changed() -> bool:
            nonlocal after
            after = self.slider()
            return after["readout"] != before["readout"] and \
                (after["images"] != before["images"] or after["output"] != before["output"])

        try:
            self.wait(changed, timeout, "the slider's output to change", poll=0.5)
        except TimeoutError:
            pass  # the caller's assertion says what did not change
        return before, after

    def wait(self, condition, timeout: float, what: str, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: waited {timeout:.0f} s for {what}")
            time.sleep(poll)

    def console_errors(self) -> list[str]:
        """SEVERE entries of the browser console since the last call."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def show_outcome(self) -> None:
        """Scroll to the first cell that raised, or else to the end of the notebook (where
        the last cell, `grade_me()`, prints the chapter's score)."""
        self.js(_PANEL + """
        const cells = panel.content.widgets;
        const failed = cells.find(c => c.model.type === 'code' &&
                                  c.model.outputs.toJSON().some(o => o.output_type === 'error'));
        (failed || cells[cells.length - 1]).node.scrollIntoView({block: failed ? 'start' : 'end'});
        return {};""")
        time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def element_screenshot(self, marker: str, path: Path) -> Path:
        """A picture of one marked element; the window grows for the time it takes when the
        element is taller than the notebook's view (a circuitsvis pattern often is)."""
        from selenium.webdriver.common.by import By

        element = self.driver.find_element(By.CSS_SELECTOR, f'[data-browser-test="{marker}"]')
        size = self.driver.get_window_size()
        grow = element.size["height"] + 300 - size["height"]
        if grow > 0:
            self.driver.set_window_size(size["width"], min(size["height"] + grow, 8000))
        try:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            time.sleep(0.3)
            path.parent.mkdir(parents=True, exist_ok=True)
            element.screenshot(str(path))
        finally:
            if grow > 0:
                self.driver.set_window_size(size["width"], size["height"])
        return path

    def close(self, timeout: float = 60) -> list[str]:
        """Save the notebook (into the server's throwaway copy), shut its kernel down, and
        leave the page; returns the console errors logged on the way. (Leaving a page with
        unsaved changes makes JupyterLab ask "leave the page?", which headless Chromium
        blocks and logs as an error.)"""
        try:
            self.js(_PANEL + "app.commands.execute('docmanager:save'); return {};")
            self.wait(lambda: not self.js(_PANEL + "return {dirty: panel.context.model.dirty};")["dirty"],
                      timeout, "the notebook to be saved")
        finally:
            self.lab.shutdown_kernels(self.name)
            errors = self.console_errors()
            self.driver.get("about:blank")
        return errors + self.console_errors()


def interactive(cell) -> bool:
    return INTERACTIVE_TAG in cell.get("metadata", {}).get("tags", [])


def browser_copy(source: Path):
    """The notebook the browser runs: WHOLE_NOTEBOOK whole; any other, its setup (the cells
    before the first exercise), its cells tagged "interactive" and the cells they need
    (tests/nbslice.py); None for a notebook without interactive cells."""
    import nbformat

    from nbslice import with_setup

    nb = nbformat.read(source, as_version=4)
    if source.stem == WHOLE_NOTEBOOK:
        return nb
    if not any(interactive(c) for c in nb.cells):
        return None
    return with_setup(nb, interactive)


def copy_notebooks(sources: list[Path], root: Path) -> None:
    """The notebooks the browser runs (`browser_copy`), in the server's root: the repository's
    files stay untouched."""
    import nbformat

    root.mkdir(parents=True, exist_ok=True)
    for source in sources:
        nbformat.write(browser_copy(source), root / source.name)
