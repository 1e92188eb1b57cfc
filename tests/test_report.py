"""The run report (`vfmvae.report`) on synthetic runs: event files written with SummaryWriter, a CSVLogger file,
JSON records. Every expected value is written by the test itself, never computed by the report code."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from vfmvae.report import NoRunsError, find_runs, load_run, write_report
from vfmvae.report.__main__ import main as report_cli
from vfmvae.report.records import flatten
from vfmvae.report.scalars import Series, image_axis, merge_pieces, smooth
from vfmvae.report.sections import probe_matrix


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        if tag in ("script", "link", "iframe"):
            self.scripts += 1


def page_images(html_text: str, folder) -> list[Image.Image]:
    """Every <img> of the page decoded; linked files must exist next to the page, and all must be PNG."""
    parser = _Images()
    parser.feed(html_text)
    assert parser.scripts == 0, "the page must not load scripts or stylesheets"
    images = []
    for src in parser.srcs:
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        else:
            assert "://" not in src, f"image fetched from elsewhere: {src}"
            data = (folder / src).read_bytes()
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        image.load()
        images.append(image)
    return images


def section_text(html_text: str, title: str) -> str:
    """The HTML between the heading ``title`` and the next heading of the same or a higher level."""
    match = re.search(rf"<h([23])[^>]*>{re.escape(title)}[^<]*</h\1>", html_text)
    assert match, f"no section {title!r}"
    level = int(match.group(1))
    end = re.compile(rf"<h[2-{level}][ >]").search(html_text, match.end())
    return html_text[match.end() : end.start() if end else len(html_text)]


def _solid(rgb) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (12, 20, 3)).copy()


@pytest.fixture
def resumed_run(tmp_path):
    """One run folder with two event files: the second process resumed from the step-5 checkpoint."""
    run = tmp_path / "tb" / "demo" / "reg"
    first = SummaryWriter(str(run))
    for step in range(10):
        first.add_scalar("loss/total", 10.0 - step, step)
        first.add_scalar("loss/G/l1", 0.5, step)
        first.add_scalar("train/lr", 1e-3, step)
        first.add_scalar("train/global_kimg", 0.008 * (step + 1), step)  # 8 images a step
        first.add_scalar("guard/num_skipped", 0.0, step)
    first.add_image("grid/samples", _solid((255, 0, 0)), 8, dataformats="HWC")
    first.close()
    time.sleep(0.05)
    second = SummaryWriter(str(run))
    for step in range(5, 8):
        second.add_scalar("loss/total", 100.0 + step, step)
        second.add_scalar("guard/num_skipped", 1.0, step)
    second.add_image("grid/samples", _solid((0, 0, 255)), 6, dataformats="HWC")
    second.close()
    (run / "config.yaml").write_text("model:\n  init_args:\n    lr: 0.001  # the run's config\n")
    return run


def test_two_event_files_merge_by_step_with_the_resume_rule(resumed_run):
    assert len(list(resumed_run.glob("events.out.tfevents.*"))) == 2
    (found,) = find_runs(resumed_run.parent.parent)
    run = load_run(found)
    total = run.scalars["loss/total"]
    assert total.steps.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # steps 8, 9 of the first process are orphaned
    assert total.values.tolist() == [10.0, 9.0, 8.0, 7.0, 6.0, 105.0, 106.0, 107.0]
    assert run.scalars["loss/G/l1"].steps.tolist() == list(range(10))  # only the first process logged it
    image = run.images["grid/samples"]
    assert image.step == 6  # newest by time: the resumed process, though the orphaned one had a larger step
    assert Image.open(io.BytesIO(image.png)).convert("RGB").getpixel((3, 3)) == (0, 0, 255)


def test_images_seen_axis_from_the_kimg_counter():
    kimg = Series(np.array([0, 1, 2]), np.array([0.008, 0.016, 0.024]), np.zeros(3))
    axis = image_axis({"train/global_kimg": kimg, "loss/total": kimg})
    assert axis.counter == "train/global_kimg" and axis.label == "images seen"
    assert np.allclose(axis(np.array([0, 2, 4])), [8.0, 24.0, 40.0])  # 8 images a step, extrapolated past step 2
    assert image_axis({"loss/total": kimg}).label == "step"


def test_merge_and_restart_inside_one_piece():
    a = Series.from_points([(0, 1.0, 0.0), (1, 2.0, 1.0), (2, 3.0, 2.0), (1, 20.0, 3.0), (2, 30.0, 4.0)])
    assert a.steps.tolist() == [0, 1, 2] and a.values.tolist() == [1.0, 20.0, 30.0]
    b = Series.from_points([(2, 300.0, 5.0)])
    merged = merge_pieces([{"x": a}, {"x": b, "y": b}])
    assert merged["x"].values.tolist() == [1.0, 20.0, 300.0] and list(merged) == ["x", "y"]


def test_smoothing_is_tensorboards_debiased_ema_skipping_non_finite_points():
    def reference(values, weight):  # TensorBoard's formula, written out
        out, last, count = [], 0.0, 0
        for v in values:
            if np.isfinite(v):
                last, count = last * weight + (1 - weight) * v, count + 1
            out.append(last / (1 - weight**count) if count else np.nan)
        return np.array(out)

    values = np.random.default_rng(0).standard_normal(300)
    values[[0, 5, 6, 200]] = np.nan
    values[7] = np.inf
    assert np.allclose(smooth(values, 0.9), reference(values, 0.9), equal_nan=True)
    assert np.allclose(smooth(np.full(50, 3.0)), 3.0)  # debiased: no ramp from zero
    assert smooth(np.array([1.0, np.nan, 1.0]), weight=0.5).tolist() == [1.0, 1.0, 1.0]


def test_report_page_of_a_resumed_run(resumed_run, tmp_path):
    out = tmp_path / "pages"
    path = write_report(resumed_run, out)
    assert path == (out / "report.html").resolve()
    text = path.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched: works from file://
    images = page_images(text, out)
    assert len(images) >= 3  # losses, learning rate, the grid at least
    losses = section_text(text, "Losses")
    assert "loss/total" in losses and "loss/G/l1" in losses
    assert "images seen" in text and "train/global_kimg" in text
    assert "2 event file(s)" in text
    guard = section_text(text, "Guard: skipped steps")
    assert "guard/num_skipped: 1 skipped steps in total" in guard
    grid = section_text(text, "Image grids (newest)")
    assert "grid/samples" in grid and "step 6" in grid
    config = section_text(text, "Config (config.yaml)")
    assert "lr: 0.001  # the run&#x27;s config" in config
    for missing in ("Representation probe", "Metrics"):
        assert f">{missing}" not in text  # not logged -> no section, no error


def test_probe_heatmap_from_scalars_and_image_fallback(tmp_path):
    run_dir = tmp_path / "run"
    writer = SummaryWriter(str(run_dir))
    rows = ["embedder", "block_0", "block_1", "block_2", "block_10", "final_layer"]
    for step in (0, 50, 100):
        for r, name in enumerate(rows):
            writer.add_scalar(f"probe/cknna/{name}", r / 10 + step / 1000, step)
        writer.add_scalar("probe/cknna/mean_over_blocks", 0.5, step)
        writer.add_scalar("probe/cknna/projector_0", 0.4, step)
    writer.add_image("probe/se_cknna_heatmap", _solid((0, 255, 0)), 100, dataformats="HWC")
    writer.add_scalar("metric/fid", 12.5, 100)
    writer.add_scalar("metric/fid", 11.25, 200)
    writer.close()
    run = load_run(find_runs(run_dir)[0])
    values, names, steps = probe_matrix(run, "cknna")
    assert names == rows  # numeric block order, aggregates and projectors left out
    assert steps == [0, 50, 100]
    expected = np.array([[r / 10 + s / 1000 for s in (0, 50, 100)] for r in range(len(rows))])
    assert np.allclose(values, expected, atol=1e-6)
    assert probe_matrix(run, "se_cknna") is None
    text = write_report(run_dir).read_text()
    probe = section_text(text, "Representation probe (CKNNA / SE-CKNNA)")
    assert "from the probe/cknna/* scalars (3 probes)" in probe
    assert "probe/se_cknna_heatmap as logged, step 100" in probe  # no se_cknna scalars: the logged image
    metrics = section_text(text, "Metrics")
    assert "metric/fid" in metrics and "11.25" in metrics
    assert len(page_images(text, run_dir)) == 4  # heat-map, logged heat-map, aggregates chart, metric curve


def test_root_with_several_runs_records_and_a_csv_run(resumed_run, tmp_path):
    root = tmp_path
    (root / "metrics.json").write_text(json.dumps({"demo_fid": {"fid": 3.5}, "passed": True}))
    (resumed_run / "tokenizer_summary.json").write_text(json.dumps({"psnr": 21.0, "steps": [1, 2]}))
    (root / "tb" / "demo" / "reg" / "checkpoints").mkdir()
    (root / "tb" / "demo" / "reg" / "checkpoints" / "junk_eval.json").write_text("{}")  # checkpoints skipped
    csv_run = root / "csv" / "other" / "version_0"
    csv_run.mkdir(parents=True)
    (csv_run / "metrics.csv").write_text(
        "epoch,loss/total,step,train/lr\n"
        "0,2.0,0,\n"
        ",,0,0.1\n"
        "0,1.5,1,\n"
        "0,1.0,2,\n"
        "0,1.25,1,\n"  # a resumed CSV logger appends: step 1 again, step 2 orphaned
    )
    # the resumed TensorBoard run also logged by a CSV logger: the CSV copy is not shown as a second run
    copy = root / "csv" / "lightning_logs" / "version_0"
    copy.mkdir(parents=True)
    rows = [f"{10.0 - s},0.5,{s}" for s in range(5)] + [f"{100.0 + s},0.5,{s}" for s in (5, 6, 7)]
    rows += ["10.0,0.5,5", "106.0,0.5,6", "107.0,0.5,7", ",0.5,8", ",0.5,9"]  # the CSV's own resume, same result
    (copy / "metrics.csv").write_text("loss/total,loss/G/l1,step\n" + "\n".join(rows) + "\n")
    found = find_runs(root)
    assert [(f.folder.relative_to(root).as_posix(), f.kind) for f in found] == [
        ("csv/lightning_logs/version_0", "csv"),
        ("csv/other/version_0", "csv"),
        ("tb/demo/reg", "tensorboard"),
    ]
    csv = load_run(found[1])
    assert csv.scalars["loss/total"].steps.tolist() == [0, 1] and csv.scalars["loss/total"].values.tolist() == [
        2.0,
        1.25,
    ]
    assert csv.scalars["train/lr"].values.tolist() == [0.1]
    text = write_report(root).read_text()
    assert text.count("<h2 id=") == 2 and 'href="#run-1"' in text
    assert "lightning_logs/version_0" in section_text(text, "Run tb/demo/reg")  # "also logged to"
    loose = section_text(text, "Records under the root")
    assert "demo_fid.fid" in loose and "3.5" in loose and "tokenizer_summary" not in loose
    assert "junk_eval" not in text
    tb_part = text[text.index("Run tb/demo/reg") :]
    assert "psnr" in section_text(tb_part, "Metrics") and "[1, 2]" in tb_part
    csv_part = text[text.index("Run csv/other/version_0") : text.index("Run tb/demo/reg")]
    assert "CSVLogger" in csv_part and "Learning rate" in csv_part and "Image grids" not in csv_part
    page_images(text, root)


def test_empty_or_missing_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsError, match="no run under .*empty"):
        write_report(tmp_path / "empty")
    assert report_cli([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing does not exist" in err


def test_flatten_json_records():
    rows = dict(flatten({"a": {"b": 1.5, "c": [1, 2]}, "ok": True, "long": list(range(10)), "x": None}))
    assert rows["a.b"] == "1.5" and rows["a.c"] == "[1, 2]" and rows["ok"] == "true" and rows["x"] == "null"
    assert rows["long.9"] == "9"


def test_long_series_are_drawn_as_a_band(tmp_path):
    """Over 4000 points a curve is a min-max band per bucket: a one-step spike stays visible, NaN is ignored."""
    from vfmvae.report.plots import curves_grid, envelope
    from vfmvae.report.scalars import ImageAxis

    values = np.arange(9000, dtype=np.float64)
    values[4321], values[10] = 1e6, np.nan
    edges, low, high = envelope(values, 2000)
    assert edges[0] == 0 and edges[-1] == 9000 and len(low) == len(high) == len(edges) - 1
    spike = np.searchsorted(edges, 4321, side="right") - 1
    assert high[spike] == 1e6 and high.max() == 1e6 and np.isfinite(low).all()
    assert low[0] == 0.0 and high[-1] == 8999.0
    png = curves_grid(ImageAxis("step"), {"loss/total": Series(np.arange(9000), values, np.zeros(9000))})
    assert Image.open(io.BytesIO(png)).format == "PNG"
