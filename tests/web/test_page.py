"""The node's web page in a real browser (Debian's chromium driven by Playwright) against two real joined nodes.

Screenshots go to build/test-artifacts/page/. Skipped, with the reason, only when chromium or Playwright is absent
(scripts/setup installs both).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nodeproc
import pytest
import pytest_asyncio

playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright is not installed (scripts/setup)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup)")

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "test-artifacts" / "page"
SLOW_MS = 120_000  # model loads and a benchmark on a busy two-core machine
playwright_api.expect.set_options(timeout=SLOW_MS)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[list[nodeproc.Proc]]:
    """Two carml-node processes, b joined to a; both serve the demo models and samples."""
    tmp = tmp_path_factory.mktemp("page")
    common = ("--lazy", "--samples", str(models_dir / "samples"))
    a = nodeproc.wait_ready(nodeproc.launch(tmp, "a", REPO / "manifests", *common))
    procs = [a]
    try:
        a.gossip = nodeproc.gossip_address(a.url)
        procs.append(nodeproc.wait_ready(nodeproc.launch(tmp, "b", REPO / "manifests", *common, "--join", a.gossip)))
        yield procs
    finally:
        for p in procs:
            nodeproc.stop(p)


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


class Page:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, page: object) -> None:
        self.page = page
        self.errors: list[str] = []
        self.exceptions: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.exceptions.append(str(e)))

    async def shot(self, name: str, *, full_page: bool = True) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.evaluate("window.scrollTo(0, 0)")  # sticky parts drawn where they belong
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


@pytest_asyncio.fixture
async def page(browser: object, mesh: list[nodeproc.Proc]) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        p = Page(await context.new_page())
        p.page.set_default_timeout(SLOW_MS)
        yield p
        assert p.exceptions == [], p.exceptions
    finally:
        await context.close()


async def test_page_loads_clean_and_shows_both_nodes_live(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, b = mesh
    await page.page.goto(a.url + "/")
    members = page.page.locator("#cluster-members [data-node-id]")
    await playwright_api.expect(members).to_have_count(2)
    for node in (a, b):
        member = page.page.locator(f'#cluster-members [data-node-id="{node.node_id}"]')
        await playwright_api.expect(member).to_have_attribute("data-state", "alive")
        await playwright_api.expect(member).to_contain_text(node.name)
    await playwright_api.expect(page.page.locator("#cluster-live")).to_have_text("live")  # the SSE stream
    await playwright_api.expect(page.page.locator("#node-badge")).to_have_text("ready")
    await page.shot("cluster")
    assert page.errors == []
    # keyboard: the sections are links, reachable and followed with the keyboard
    await page.page.locator('#nav a[data-section="models"]').focus()
    await page.page.keyboard.press("Enter")
    await playwright_api.expect(page.page.locator("#section-models")).to_be_visible()
    await playwright_api.expect(page.page.locator('#nav a[aria-current="page"]')).to_have_text("Models")
    # a phone-sized screen
    await page.page.set_viewport_size({"width": 390, "height": 844})
    await page.page.goto(a.url + "/#cluster")
    await playwright_api.expect(page.page.locator("#cluster-members [data-node-id]")).to_have_count(2)
    await page.shot("cluster-phone")
    assert page.errors == []


async def test_cat_photo_on_both_nodes_and_its_trace(page: Page, mesh: list[nodeproc.Proc], cat_jpeg: bytes) -> None:
    a, b = mesh
    await page.page.goto(a.url + "/#playground")
    model = page.page.locator('#pg-models input[data-model="efficientnet-lite0"]')
    await model.check()
    for other in await page.page.locator("#pg-models input[data-model]").all():
        if await other.get_attribute("data-model") != "efficientnet-lite0":
            await other.uncheck()
    for node in (a, b):  # one target per node: the request to b is forwarded there
        await page.page.locator("#pg-nodes label", has_text=node.name).click()
    await page.page.locator("#pg-files").set_input_files(
        files=[{"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": cat_jpeg}]
    )
    await playwright_api.expect(page.page.locator("#pg-run")).to_be_enabled()
    await page.page.locator("#pg-run").click()
    runs = page.page.locator("#pg-results .run")
    await playwright_api.expect(runs).to_have_count(2)
    for node in (a, b):
        run = page.page.locator(f'#pg-results .run[data-target-node="{node.name}"]')
        await playwright_api.expect(run.locator(".pred-label").first).to_contain_text("cat")
        await playwright_api.expect(run.locator(".served-node")).to_have_text(node.name)
        await playwright_api.expect(run.locator(".stack .seg").first).to_be_visible()
    await page.shot("playground")
    # the trace of the request forwarded to b: spans from both nodes, worker spans among them
    await page.page.locator('#pg-results .run[data-target-node="b"] a.trace-link').click()
    await playwright_api.expect(page.page.locator("#section-trace")).to_be_visible()
    rows = page.page.locator("#trace-view .span-row")
    await playwright_api.expect(rows.first).to_be_visible()
    assert await rows.count() >= 2
    legend = page.page.locator("#trace-view .chart-legend")
    await playwright_api.expect(legend).to_contain_text(a.node_id)
    await playwright_api.expect(legend).to_contain_text(b.node_id)
    await rows.first.click()
    await playwright_api.expect(page.page.locator("#trace-view .span-details")).to_contain_text("span id")
    await page.shot("trace")


async def test_feedback_form_keeps_markup_as_text(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, b = mesh
    await page.page.goto(a.url + "/#models")
    await page.page.locator('#model-list button[data-model="digits-cnn"]').click()
    detail = page.page.locator("#model-detail")
    await playwright_api.expect(detail.locator("h3")).to_contain_text("digits-cnn")
    # where it is deployed follows the cluster: the peer as a link to its own page, this node in bold
    await playwright_api.expect(detail.locator("#model-where a")).to_have_text(b.name)
    await playwright_api.expect(detail.locator("#model-where b")).to_have_text(a.name)
    await detail.locator('label[for="rating-digits-cnn-4"]').click()
    comment = "<b>bold</b> & <script>window.pwned = 1</script>"
    await detail.locator("#fb-comment").fill(comment)
    await detail.locator("#fb-author").fill("tester")
    await detail.get_by_role("button", name="Send feedback").click()
    item = detail.locator(".feedback-item", has_text="tester").first
    await playwright_api.expect(item.locator(".feedback-comment")).to_have_text(comment)
    assert await item.locator(".feedback-comment b, .feedback-comment script").count() == 0  # text, never markup
    assert await page.page.evaluate("window.pwned") is None
    await page.shot("models")
    # the same feedback, listed from the other node
    await page.page.goto(b.url + "/#models")
    await page.page.locator('#model-list button[data-model="digits-cnn"]').click()
    await playwright_api.expect(page.page.locator("#model-detail .feedback-comment").first).to_have_text(comment)


async def test_a_small_benchmark_completes_and_is_plotted(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, _ = mesh
    await page.page.goto(a.url + "/#benchmarks")
    targets = page.page.locator("#bench-targets input")
    await playwright_api.expect(targets.first).to_be_attached()
    for t in await targets.all():
        value = await t.get_attribute("value") or ""
        await t.set_checked('"digits-cnn"' in value and '"onnxruntime"' in value)
    await page.page.locator("#bench-name").fill("page test")
    await page.page.locator("#bench-batches").fill("1, 2")
    await page.page.locator("#bench-min-queries").fill("20")
    await page.page.locator("#bench-min-duration").fill("0")
    await page.page.locator("#bench-submit").click()
    await playwright_api.expect(page.page.locator("#bench-status")).to_have_attribute("data-status", "done")
    plots = page.page.locator("#bench-run svg.chart")
    await playwright_api.expect(plots.first).to_be_visible()
    assert await page.page.locator("#bench-run svg.chart path").count() >= 2
    await playwright_api.expect(page.page.locator("#bench-runs")).to_contain_text("page test")
    await page.shot("benchmark")
    # a second run, then both compared
    await page.page.locator("#bench-name").fill("page test 2")
    await page.page.locator("#bench-batches").fill("4")
    await page.page.locator("#bench-submit").click()
    await playwright_api.expect(page.page.locator("#bench-status h3")).to_contain_text("page test 2")
    await playwright_api.expect(page.page.locator("#bench-status")).to_have_attribute("data-status", "done")
    await playwright_api.expect(page.page.locator("#bench-runs")).to_contain_text("page test 2")
    assert "null" not in await page.page.locator("#bench-run").inner_text()  # one series: nothing left unsaid
    for name in ("page test", "page test 2"):
        await page.page.get_by_role("checkbox", name=f"compare {name}", exact=True).first.check()
    await page.page.locator("#bench-compare-button").click()
    await playwright_api.expect(page.page.locator("#bench-compare svg.chart").first).to_be_visible()
    assert await page.page.locator("#bench-compare svg.chart rect").count() >= 3  # 3 configurations
    await page.shot("benchmark-compare")


async def test_a_digits_evaluation_shows_its_accuracy(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, _ = mesh
    await page.page.goto(a.url + "/#evaluations")
    select = page.page.locator("#eval-model")
    await playwright_api.expect(select.locator("option").first).to_be_attached()
    await page.page.locator("#eval-form button[type=submit]").click()
    await playwright_api.expect(page.page.locator("#eval-result")).to_have_attribute("data-status", "done")
    await playwright_api.expect(page.page.locator("#eval-result .metric-name").first).to_have_text("top-1")
    await page.shot("evaluation")


async def test_api_errors_are_shown(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, _ = mesh
    await page.page.goto(a.url + "/#trace/" + "0" * 31 + "1")
    error = page.page.locator("#trace-view .error-box")
    await playwright_api.expect(error).to_contain_text("not found")


async def test_a_node_joining_and_leaving_shows_live(page: Page, mesh: list[nodeproc.Proc], tmp_path: Path) -> None:
    a, _ = mesh
    await page.page.goto(a.url + "/#cluster")
    await playwright_api.expect(page.page.locator("#cluster-members [data-node-id]")).to_have_count(2)
    (tmp_path / "none").mkdir()
    c = nodeproc.wait_ready(nodeproc.launch(tmp_path, "c", tmp_path / "none", "--lazy", "--join", a.gossip))
    try:
        member = page.page.locator(f'#cluster-members [data-node-id="{c.node_id}"]')
        await playwright_api.expect(member).to_have_attribute("data-state", "alive")
        await playwright_api.expect(page.page.locator("#cluster-activity")).to_contain_text("c joined")
    finally:
        nodeproc.stop(c)  # SIGTERM: a graceful leave
    await playwright_api.expect(member).to_have_attribute("data-state", "left")
    await playwright_api.expect(page.page.locator("#cluster-activity")).to_contain_text("c left")
    await page.shot("cluster-leave")


def framework_trace(node_id: str, ops: int = 300) -> tuple[str, list[dict]]:
    """A trace shaped like a framework-level one: a request, its worker stages, and hundreds of op spans (each with
    two children) inside a few milliseconds of a long request."""
    trace_id = secrets.token_hex(16)
    t0 = time.time_ns() // 1000 - 3_000_000  # µs; recent, or the store's retention drops it
    tags = {"carml.node.id": node_id}
    ids = iter(f"{i:016x}" for i in range(1, 10 * ops))

    def span(name: str, parent: str | None, start: int, duration: int) -> dict:
        s = {"traceId": trace_id, "id": next(ids), "name": name, "timestamp": t0 + start, "duration": duration}
        return {**s, "parentId": parent, "tags": tags} if parent else {**s, "tags": tags}

    root = span("post /api/predict", None, 0, 2_000_000)
    compute = span("worker.compute", root["id"], 1_000_000, 30 * ops)
    forward = span("forward", compute["id"], 1_000_010, 30 * ops - 20)
    spans = [root, span("model.load", root["id"], 10, 900_000), compute, forward]
    for i in range(ops):
        op = span(f"aten::op_{i}", forward["id"], 1_000_010 + 30 * i, 25)
        spans += [op, span(f"aten::inner_{i}", op["id"], 1_000_011 + 30 * i, 10)]
    return trace_id, spans


async def test_a_trace_of_hundreds_of_op_spans_opens_folded_and_zooms(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, _ = mesh
    trace_id, spans = framework_trace(a.node_id)
    posted = await page.page.request.post(
        a.url + "/api/v2/spans", data=json.dumps(spans), headers={"Content-Type": "application/json"}
    )
    assert posted.status == 202
    await page.page.goto(f"{a.url}/#trace/{trace_id}")
    rows = page.page.locator("#trace-view .span-row")
    forward = page.page.locator('#trace-view .span-row[data-span-id="0000000000000003"]')
    # 604 spans, but the forward pass is folded: its 600 spans are one row until it is opened
    await playwright_api.expect(forward).to_have_attribute("aria-expanded", "false")
    await playwright_api.expect(forward).to_contain_text("+600")
    assert await rows.count() == 4
    # the keyboard: one tab stop for the whole list; arrows move, → opens, Enter shows the details
    assert await page.page.locator("#trace-view .span-row[tabindex='0']").count() == 1
    await rows.first.focus()
    for key in ("End", "ArrowRight"):
        await page.page.keyboard.press(key)
    await playwright_api.expect(forward).to_have_attribute("aria-expanded", "true")
    assert await rows.count() == 4 + 300
    await page.page.keyboard.press("ArrowDown")
    await page.page.keyboard.press("Enter")
    details = page.page.locator("#trace-view .span-details")
    await playwright_api.expect(details.locator("h4")).to_have_text("aten::op_0")
    # zoomed to the forward pass, the time axis spans its 9 ms, not the request's 2 s
    await forward.click()
    await details.get_by_role("button", name="Zoom to this span").click()
    await playwright_api.expect(page.page.locator("#trace-view .wf-zoom")).to_contain_text("Zoomed to forward")
    await playwright_api.expect(page.page.locator("#trace-view .wf-scale span").last).to_have_text("+8.98 ms")
    await page.shot("trace-framework", full_page=False)  # the top: 300 rows make a very tall picture
    await page.page.set_viewport_size({"width": 390, "height": 844})
    assert await page.page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await page.shot("trace-framework-phone", full_page=False)


async def test_every_section_fits_a_phone(page: Page, mesh: list[nodeproc.Proc]) -> None:
    a, _ = mesh
    await page.page.set_viewport_size({"width": 390, "height": 844})
    await page.page.goto(a.url + "/#cluster")
    await playwright_api.expect(page.page.locator(f'#cluster-members [data-node-id="{a.node_id}"]')).to_be_visible()
    for section in ("cluster", "models", "playground", "benchmarks", "evaluations", "trace"):
        await page.page.goto(f"{a.url}/#{section}")
        await playwright_api.expect(page.page.locator(f"#section-{section}")).to_be_visible()
        if section == "models":  # the first model's manifest, however the cluster and the models raced in
            await playwright_api.expect(page.page.locator("#model-detail .model-details")).to_be_visible()
        # every section's tab in sight (they wrap, none hides off the edge), and nothing wider than the screen
        for link in await page.page.locator("#nav a").all():
            await playwright_api.expect(link).to_be_in_viewport()
        assert await page.page.evaluate("document.documentElement.scrollWidth") <= 390, section
        await page.shot(f"phone-{section}")
    assert page.errors == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_page_recovers_when_its_node_restarts(page: Page, mesh: list[nodeproc.Proc], tmp_path: Path) -> None:
    a, _ = mesh
    (tmp_path / "none").mkdir()
    port = str(free_port())  # the same address after the restart, as a restarted service has
    c = nodeproc.wait_ready(nodeproc.launch(tmp_path, "c", tmp_path / "none", "--port", port, "--join", a.gossip))
    try:
        await page.page.goto(c.url + "/#cluster")
        live = page.page.locator("#cluster-live")
        await playwright_api.expect(live).to_have_text("live")
        for node in (a, c):
            member = page.page.locator(f'#cluster-members [data-node-id="{node.node_id}"]')
            await playwright_api.expect(member).to_have_attribute("data-state", "alive")
        nodeproc.stop(c)
        # the last known state stays, greyed and said to be old, while EventSource retries
        await playwright_api.expect(live).to_have_text("reconnecting…")
        await playwright_api.expect(page.page.locator("#cluster-members.stale")).to_have_count(1)
        await playwright_api.expect(page.page.locator("#cluster-summary")).to_contain_text("Lost contact")
        await page.shot("cluster-reconnecting")
        c = nodeproc.wait_ready(nodeproc.launch(tmp_path, "c", tmp_path / "none", "--port", port, "--join", a.gossip))
        await playwright_api.expect(live).to_have_text("live")
        await playwright_api.expect(page.page.locator("#cluster-members.stale")).to_have_count(0)
        await playwright_api.expect(
            page.page.locator(f'#cluster-members [data-node-id="{a.node_id}"]')
        ).to_have_attribute("data-state", "alive")
        await playwright_api.expect(page.page.locator("#node-badge")).to_have_text("ready")
    finally:
        nodeproc.stop(c)
