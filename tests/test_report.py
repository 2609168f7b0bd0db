"""Figures and report: files, numbers, embedding and rendering, from synthetic and real run directories.

Synthetic runs are built so the statistics have closed forms: Δ_t alternates a(1 ± c), so over any even
number of steps RMS Δ = a√(1 + c²) and mean Δ = a exactly, and ‖w‖ is a fixed multiple of a constant w*.
The real run is a tiny BatchNorm CNN trained for 60 steps with the monitor, whose numbers the test
recomputes from ``metrics.csv`` with the csv module and plain loops.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import io
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor
from smdyn.experiments import _plotting, figures, rundir
from smdyn.experiments.report import add_report_arguments, report_main, write_report
from smdyn.sinks import CSVSink, ParquetSink

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE_FILES = (
    "angular_update.png",
    "angular_update_comparison.png",
    "weight_norm.png",
    "unit_gradient.png",
    "training.png",
    "stage_ratio.png",
)
C = 0.5  # Δ_t = a(1 ± C): RMS = a√(1 + C²), mean = a
COLLAPSE = "RMS Δ/Δ* far below 1 long after the last hyper-parameter change: the unit gradient is collapsing"
FROZEN = "frozen parameter (requires_grad=False)"


# ---------------------------------------------------------------------------------------------- builders


def _delta_star(lr: float, wd: float, mom: float) -> float:
    return math.sqrt(2 * wd * lr / (1 + mom))


def _write_synthetic(
    run_dir: Path,
    *,
    name: str,
    steps: int = 1000,
    lr: float = 0.1,
    wd: float = 5e-4,
    mom: float = 0.9,
    drop_at: int | None = None,
    rms_ratio: tuple[float, ...] = (1.02, 0.97, 1.10, 0.95),
    norm_ratio: tuple[float, ...] = (1.01, 0.98, 1.30, 1.05),
    eq_last: tuple[bool, ...] = (True, True, False, True),
    frozen_layer: bool = True,
    theory: bool = True,
    test_accuracy: float = 0.8125,
    seed: int = 0,
    optimizer: str = "sgd",
    per_channel: int = 0,
) -> dict[str, float]:
    """A run directory in the runner's layout; returns the closed-form statistics of its last window.

    Layers ``layerK.conv.weight`` for K < len(rms_ratio) follow the given ratios in the last stage (and
    twice them before ``drop_at``, so a window that leaks into the earlier stage gives other numbers); an
    extra frozen layer has NaN theory and a reason. The last layer's final 50 steps carry the collapse
    reason. ``per_channel`` > 0 writes the first layer as that many channel rows instead.
    """
    run_dir.mkdir(parents=True)
    nl = len(rms_ratio)
    names = [f"layer{k}.conv.weight" for k in range(nl)] + (["frozen.weight"] if frozen_layer else [])
    rows: dict[str, list] = {c: [] for c in ("step", "param", "channel", "lr", "wd", "momentum")}
    more: dict[str, list] = {
        c: []
        for c in (
            "weight_norm",
            "unit_grad_sq",
            "h_tilde",
            "angular_update",
            "effective_lr",
            "grad_cosine",
            "angular_update_rms",
            "angular_update_mean",
            "l_estimate",
            "theory_angular_update",
            "theory_weight_norm",
            "in_equilibrium",
            "reason",
        )
    }
    rng = np.random.default_rng(seed)
    for t in range(steps):
        eta = lr if drop_at is None or t < drop_at else lr / 10
        star = _delta_star(eta, wd, mom)
        late = drop_at is None or t >= drop_at
        sign = 1.0 if t % 2 == 0 else -1.0
        for k, pname in enumerate(names):
            frozen = k >= nl
            r = 1.0 if frozen else rms_ratio[k] * (1.0 if late else 2.0)
            q = 1.0 if frozen else norm_ratio[k]
            a = r * star / math.sqrt(1 + C * C)
            w_star = 2.0 + k
            chans = per_channel if (k == 0 and per_channel) else 0
            for ch in range(chans) if chans else [-1]:
                split = math.sqrt(chans) if chans else 1.0  # channel norms add up in squares to ‖w‖
                rows["step"].append(t)
                rows["param"].append(pname)
                rows["channel"].append(ch)
                rows["lr"].append(eta)
                rows["wd"].append(wd)
                rows["momentum"].append(mom)
                more["weight_norm"].append(q * w_star / split)
                g2 = float(rng.uniform(0.5, 1.5))
                more["unit_grad_sq"].append(g2)
                more["h_tilde"].append(g2 * 0.9)
                more["angular_update"].append(a * (1 + sign * C))
                more["effective_lr"].append(eta / (q * w_star) ** 2)
                more["grad_cosine"].append(0.0)
                more["angular_update_rms"].append(r * star)
                more["angular_update_mean"].append(a)
                more["l_estimate"].append(1.0)
                has = theory and not frozen
                more["theory_angular_update"].append(star if has else math.nan)
                more["theory_weight_norm"].append(w_star / split if has else math.nan)
                more["in_equilibrium"].append(bool(not frozen and eq_last[k] and t == steps - 1))
                reason = ""
                if frozen:
                    reason = FROZEN
                elif not theory:
                    reason = f"{optimizer}: no equilibrium theory for this rule"
                elif k == nl - 1 and t >= steps - 50:
                    reason = COLLAPSE
                more["reason"].append(reason)
    batch = {k: np.asarray(v) for k, v in {**rows, **more}.items()}
    batch["param"] = batch["param"].astype(object)
    batch["reason"] = batch["reason"].astype(object)
    sink = CSVSink(run_dir / "metrics.csv")
    for lo in range(0, len(batch["step"]), 997):  # several flushes, as a monitor writes them
        sink.write({k: v[lo : lo + 997] for k, v in batch.items()})
    sink.close()
    _write_train(run_dir, steps, test_accuracy, drop_at, lr)
    (run_dir / "config.toml").write_text(
        f'[run]\nname = "{name}"\nseed = {seed}\nsteps = {steps}\n\n[model]\nname = "resnet20"\n\n'
        f'[optim]\nname = "{optimizer}"\nlr = {lr}\nmomentum = {mom}\nweight_decay = {wd}\n\n'
        f'[schedule]\nname = "{"multistep" if drop_at else "constant"}"\n\n[data]\nname = "shapes"\n'
    )
    if drop_at is not None:
        (run_dir / "events.csv").write_text(
            f"step,kind,group,lr_before,lr_after,factor\n{drop_at},lr_change,0,{lr},{lr / 10},10.0\n"
        )
    (run_dir / "summary.json").write_text(json.dumps({"final_test_accuracy": test_accuracy, "note": "x"}))
    dev_rms = [abs(r - 1) for r in rms_ratio]
    dev_norm = [abs(q - 1) for q in norm_ratio]
    return {
        "med_rms": float(np.median(dev_rms)) if theory else math.nan,
        "med_norm": float(np.median(dev_norm)) if theory else math.nan,
        "n_eq": sum(eq_last),
        "n_layers": len(names),
    }


def _write_train(run_dir: Path, steps: int, final_acc: float, drop_at: int | None, lr: float) -> None:
    with open(run_dir / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "lr", "loss", "accuracy", "test_loss", "test_accuracy"])
        for t in range(steps):
            eta = lr if drop_at is None or t < drop_at else lr / 10
            evaluated = (t + 1) % 100 == 0
            acc = final_acc if t == steps - 1 else 0.5 + 0.3 * t / steps
            w.writerow(
                [
                    t,
                    t // 100,
                    eta,
                    2.3 * math.exp(-t / 300) + 0.1,
                    0.5,
                    0.9 if evaluated else "nan",
                    acc if evaluated else "nan",
                ]
            )


def _train_real(run_dir: Path, steps: int = 60, window: int = 20) -> None:
    """A tiny BatchNorm CNN on a fixed random-teacher image task, monitored into a CSV, in the run layout."""
    from smdyn.experiments.models import small_bn_cnn

    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(512, 3, 8, 8, generator=gen)
    teacher = torch.randn(3 * 8 * 8, 4, generator=gen)
    y_all = (x_all.flatten(1) @ teacher).argmax(1)
    x_test, y_test = x_all[448:], y_all[448:]
    model = small_bn_cnn(num_classes=4, in_channels=3, width=4)
    lr, wd, mom = 0.2, 1e-3, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    mon = SphericalMonitor(
        model, opt, sinks=[CSVSink(run_dir / "metrics.csv")], window=window, flush_every=16
    )
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    with mon:
        for t in range(steps):
            idx = torch.randint(448, (32,), generator=gen)
            out = model(x_all[idx])
            loss = loss_fn(out, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            test_acc = math.nan
            if (t + 1) % 20 == 0:
                model.eval()
                with torch.no_grad():
                    test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
                model.train()
            acc = (out.argmax(1) == y_all[idx]).float().mean().item()
            rows.append((t, 0, lr, loss.item(), acc, math.nan, test_acc))
    with open(run_dir / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "lr", "loss", "accuracy", "test_loss", "test_accuracy"])
        w.writerows(rows)
    (run_dir / "config.toml").write_text(
        '[run]\nname = "tiny-bn-cnn"\nseed = 0\n\n[model]\nname = "small_bn_cnn"\nwidth = 4\n\n'
        f'[optim]\nname = "sgd"\nlr = {lr}\nmomentum = {mom}\nweight_decay = {wd}\n\n'
        f"[monitor]\nwindow = {window}\n"
    )


def _independent_layer_stats(run_dir: Path, window: int) -> dict[str, dict[str, float]]:
    """Per-layer RMS and mean of Δ/Δ*, √(Σ‖w‖²/Σw*²) and the last in_equilibrium flag, by plain loops."""
    with open(run_dir / "metrics.csv", newline="") as f:
        records = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in records})
    first = steps[-window] if len(steps) >= window else steps[0]
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["param"] for r in records):
        mine = [r for r in records if r["param"] == name and int(r["step"]) >= first]
        ratios = [float(r["angular_update"]) / float(r["theory_angular_update"]) for r in mine]
        w2 = [float(r["weight_norm"]) ** 2 for r in mine if float(r["theory_weight_norm"]) > 0]
        ws2 = [float(r["theory_weight_norm"]) ** 2 for r in mine if float(r["theory_weight_norm"]) > 0]
        final = max((r for r in records if r["param"] == name), key=lambda r: int(r["step"]))
        out[name] = {
            "rms_ratio": math.sqrt(sum(x * x for x in ratios) / len(ratios)),
            "mean_ratio": sum(ratios) / len(ratios),
            "norm_ratio": math.sqrt(sum(w2) / sum(ws2)) if ws2 else math.nan,
            "eq": final["in_equilibrium"] == "True",
        }
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _row(page: str, layer: str) -> str:
    m = re.search(rf"<tr><td>{re.escape(layer)}</td>(.*?)</tr>", page)
    assert m, f"no table row for {layer}"
    return m.group(1)


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("synthetic")
    expected = {
        "sgdm-a": _write_synthetic(base / "a", name="sgdm-a", seed=0, drop_at=900),
        "sgdm-b": _write_synthetic(base / "b", name="sgdm-b", seed=1, drop_at=900, test_accuracy=0.75),
        "adam": _write_synthetic(
            base / "c", name="adam", optimizer="adam", theory=False, frozen_layer=False, test_accuracy=0.7
        ),
    }
    out = base / "report"
    # Through the command line entry point, as `smdyn report a b c --out ... --title ... --layer layer1`.
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    argv = [str(base / n) for n in "abc"] + ["--out", str(out), "--title", "Synthetic comparison"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = report_main(parser.parse_args([*argv, "--layer", "layer1"]))
    assert rc == 0
    return {
        "base": base,
        "expected": expected,
        "out": out,
        "page": out / "report.html",
        "stdout": printed.getvalue(),
    }


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("real") / "run"
    _train_real(run_dir)
    page_path = write_report([run_dir])
    return {"run": run_dir, "page": page_path}


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_every_figure_is_a_png_and_embedded(which: str, request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(which)
    page_path: Path = data["page"]
    page = page_path.read_text(encoding="utf-8")
    expected = (
        FIGURE_FILES if which == "synthetic" else tuple(f for f in FIGURE_FILES if "comparison" not in f)
    )
    found = sorted(p.name for p in (page_path.parent / "figures").glob("*.png"))
    assert found == sorted(expected)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(expected)
    for name in expected:
        raw = (page_path.parent / "figures" / name).read_bytes()
        width, height = _png_size(raw)
        assert 900 <= width <= 2400 and 450 <= height <= 2000, (name, width, height)
        assert len(raw) > 20_000, name  # a blank canvas compresses to a few kB
        assert base64.b64encode(raw).decode() in embedded, f"{name} is not embedded byte for byte"
    # Self-contained: nothing fetched from elsewhere, and no script at all.
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_default_out_is_the_run_dir_for_one_run(real: dict) -> None:
    assert real["page"] == real["run"] / "report.html"


def test_default_out_for_several_runs_is_a_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        _write_train(tmp_path / name, 50, 0.5, None, 0.1)
    monkeypatch.chdir(tmp_path)
    first = write_report([tmp_path / "x", tmp_path / "y"])
    second = write_report([tmp_path / "x", tmp_path / "y"])
    assert first.resolve().parent.parent == tmp_path / "runs"
    assert first.parent.name.startswith("report-") and first.name == "report.html"
    assert second.parent != first.parent
    assert (first.parent / "figures" / "training.png").exists()


# ---------------------------------------------------------------------------------------------- numbers


def test_synthetic_summary_numbers_match_closed_forms(synthetic: dict) -> None:
    page = synthetic["page"].read_text(encoding="utf-8")
    overview = page[page.index('<table class="data overview">') :]
    overview = overview[: overview.index("</table>")]
    for name, acc in (("sgdm-a", "81.25%"), ("sgdm-b", "75.00%")):
        exp = synthetic["expected"][name]
        row = _cells(re.search(rf"<tr><td>.*?{name}</td>(.*?)</tr>", overview).group(1))
        # Closed form: |r − 1| = (0.02, 0.03, 0.10, 0.05) → median 4.00%; |q − 1| → 3.50%.
        assert exp["med_rms"] == pytest.approx(0.04) and exp["med_norm"] == pytest.approx(0.035)
        assert row[2].startswith(f"{100 * exp['med_rms']:.2f}%")
        assert "(4 with Δ*)" in row[2]  # the frozen layer has no Δ* and is left out of the median
        assert row[4] == f"{100 * exp['med_norm']:.2f}%"
        assert row[5] == f"{exp['n_eq']}/{exp['n_layers']} (60%)"
        assert row[6] == acc
    # mean Δ/Δ* = r/√(1+c²): median |·−1| over r = (1.02, 0.97, 1.10, 0.95)
    mean_dev = float(np.median([abs(r / math.sqrt(1 + C * C) - 1) for r in (1.02, 0.97, 1.10, 0.95)]))
    row = _cells(re.search(r"<tr><td>.*?sgdm-a</td>(.*?)</tr>", overview).group(1))
    assert row[3] == f"{100 * mean_dev:.2f}%"
    adam = _cells(re.search(r"<tr><td>.*?adam</td>(.*?)</tr>", overview).group(1))
    assert adam[2].startswith("–") and adam[4] == "–" and adam[6] == "70.00%"


def test_synthetic_per_layer_rows_use_only_the_last_stage(synthetic: dict) -> None:
    """The drop is at step 900 and the window 200 steps: before it Δ/Δ* was 2r, so any leak shows."""
    page = synthetic["page"].read_text(encoding="utf-8")
    section = page[page.index("sgdm-a</b>") :]
    assert "steps 900–999" in section[:400]
    for k, (r, q) in enumerate(zip((1.02, 0.97, 1.10, 0.95), (1.01, 0.98, 1.30, 1.05), strict=True)):
        cells = _cells(_row(section, f"layer{k}.conv.weight"))
        assert cells[0] == f"{r:.3f}"
        assert cells[1] == f"{r / math.sqrt(1 + C * C):.3f}"
        assert cells[2] == f"{q:.3f}"
    frozen = _cells(_row(section, "frozen.weight"))
    assert frozen[0] == "–" and frozen[-1] == FROZEN


def test_reasons_are_surfaced_as_warnings(synthetic: dict) -> None:
    page = synthetic["page"].read_text(encoding="utf-8")
    warnings = page[page.index('<ul class="warnings">') :]
    warnings = warnings[: warnings.index("</ul>")]
    assert f'<li class="bad"><b>sgdm-a:</b> {COLLAPSE}' in warnings
    assert "1 layer (layer3.conv), steps 950–999, 50 records" in warnings
    assert f"{FROZEN} — 1 layer (frozen), steps 0–999, 1000 records" in warnings
    assert "adam: no equilibrium theory for this rule — 4 layers" in warnings


def test_seeds_share_a_colour_and_labels_name_what_differs(synthetic: dict) -> None:
    base = synthetic["base"]
    runs = [rundir.load_run(base / n) for n in ("a", "b", "c")]
    styles = figures.run_styles(runs)
    assert styles[0].colour == styles[1].colour != styles[2].colour
    assert styles[0].group == styles[1].group != styles[2].group
    assert "(2 runs)" in styles[0].label
    assert styles[0].label.startswith("multistep, sgd") or "sgd" in styles[0].label
    assert "adam" in styles[2].label and "seed" not in styles[0].label


def test_real_run_numbers_match_an_independent_recomputation(real: dict) -> None:
    page = real["page"].read_text(encoding="utf-8")
    stats = _independent_layer_stats(real["run"], window=20)
    assert len(stats) == 3  # conv1..conv3 of the small BN CNN
    for name, s in stats.items():
        cells = _cells(_row(page, name))
        assert cells[0] == f"{s['rms_ratio']:.3f}", name
        assert cells[1] == f"{s['mean_ratio']:.3f}", name
        assert cells[2] == f"{s['norm_ratio']:.3f}", name
        assert (cells[8] == "yes") == s["eq"], name
    med = float(np.median([abs(s["rms_ratio"] - 1) for s in stats.values()]))
    assert f"median |RMS Δ/Δ* − 1| {100 * med:.2f}%" in page
    with open(real["run"] / "train.csv", newline="") as f:
        accs = [float(r["test_accuracy"]) for r in csv.DictReader(f) if r["test_accuracy"] != "nan"]
    assert f"{100 * accs[-1]:.2f}%" in page


# ---------------------------------------------------------------------------------------------- loading


def test_reduce_matches_a_brute_force_binning() -> None:
    rng = np.random.default_rng(3)
    steps = np.arange(0, 10_007 * 3, 3)
    values = rng.standard_normal((len(steps), 2))
    values[100:130, 1] = np.nan  # a gap inside one bin and a whole bin of NaN
    x, lo, hi, mean = _plotting._reduce(steps, values, max_points=500)
    per = math.ceil(len(steps) / 500)
    assert len(x) == math.ceil(len(steps) / per) <= 500
    for b in (0, 7, 14, len(x) - 1):
        chunk, xs = values[b * per : (b + 1) * per], steps[b * per : (b + 1) * per]
        for j in range(2):
            col = [v for v in chunk[:, j] if v == v]
            if not col:
                assert np.isnan(lo[b, j]) and np.isnan(hi[b, j])
                continue
            assert lo[b, j] == min(col) and hi[b, j] == max(col)
            assert mean[b, j] == pytest.approx(sum(col) / len(col), rel=1e-12)
        assert x[b] == pytest.approx(sum(xs) / len(xs))
    small = _plotting._reduce(steps[:10], values[:10])
    assert np.array_equal(small[1], values[:10], equal_nan=True)


def test_channel_rows_fold_exactly_into_layer_rows(tmp_path: Path) -> None:
    _write_synthetic(tmp_path / "ch", name="ch", steps=40, per_channel=4, frozen_layer=False)
    run = rundir.load_run(tmp_path / "ch")
    assert run.per_channel == ["layer0.conv.weight"]
    assert run.layers[0] == "layer0.conv.weight" and len(run.layers) == 4
    m = run.metrics
    row = m[(m["param"] == "layer0.conv.weight") & (m["step"] == 7)].iloc[0]
    with open(tmp_path / "ch" / "metrics.csv", newline="") as f:
        chans = [r for r in csv.DictReader(f) if r["param"] == "layer0.conv.weight" and r["step"] == "7"]
    assert len(chans) == 4
    w2 = sum(float(r["weight_norm"]) ** 2 for r in chans)
    g2 = sum(float(r["unit_grad_sq"]) / float(r["weight_norm"]) ** 2 for r in chans)
    assert row["weight_norm"] == pytest.approx(math.sqrt(w2), rel=1e-13)
    assert row["unit_grad_sq"] == pytest.approx(g2 * w2, rel=1e-13)
    d2 = [float(r["angular_update"]) ** 2 for r in chans]
    assert row["angular_update"] == pytest.approx(math.sqrt(sum(d2) / 4), rel=1e-13)
    assert row["theory_weight_norm"] == pytest.approx(2.0 * 1.0, rel=1e-13)  # w* of the whole tensor


def test_parquet_metrics_read_like_csv(synthetic: dict, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    src = synthetic["base"] / "a"
    dst = tmp_path / "pq"
    shutil.copytree(src, dst)
    csv_run = rundir.load_run(src)
    (dst / "metrics.csv").unlink()
    from smdyn.sinks import read_metrics

    sink = ParquetSink(dst / "metrics")
    sink.write(read_metrics(src / "metrics.csv"))
    sink.close()
    pq_run = rundir.load_run(dst)
    assert pq_run.layers == csv_run.layers
    for col in ("weight_norm", "angular_update", "theory_angular_update"):
        a, b = pq_run.wide(col)[1], csv_run.wide(col)[1]
        assert np.array_equal(a, b, equal_nan=True), col
    assert list(pq_run.metrics["reason"]) == list(csv_run.metrics["reason"])


def test_unfinished_last_line_is_skipped_with_a_warning(synthetic: dict, tmp_path: Path) -> None:
    dst = tmp_path / "cut"
    shutil.copytree(synthetic["base"] / "a", dst)
    with open(dst / "metrics.csv", "a") as f:
        f.write("1000,layer0.conv.weight,-1,0.01,0.0")  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="unfinished last line"):
        run = rundir.load_run(dst)
    assert int(run.metrics["step"].max()) == 999


def test_events_are_derived_from_the_recorded_lr_when_no_events_file(synthetic: dict, tmp_path: Path) -> None:
    dst = tmp_path / "noev"
    shutil.copytree(synthetic["base"] / "a", dst)
    (dst / "events.csv").unlink()
    run = rundir.load_run(dst)
    assert run.stage_starts.tolist() == [0, 900]
    assert run.events["step"].tolist() == [900]


def test_figure_without_data_raises_nodataerror(tmp_path: Path) -> None:
    d = tmp_path / "only-train"
    d.mkdir()
    _write_train(d, 50, 0.5, None, 0.1)
    with pytest.raises(figures.NoDataError, match="no run has metrics"):
        figures.angular_update_figure([d])
    page = write_report([d], out=tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    assert "not drawn" in text and "no config.toml" in text
    assert len(re.findall(r'<img src="data:image/png', text)) == 1  # training curves only


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors(synthetic: dict, tmp_path: Path) -> None:
    a = synthetic["base"] / "a"
    with pytest.raises(TypeError, match="run_dirs"):
        write_report(str(a))
    with pytest.raises(ValueError, match="run_dirs"):
        write_report([])
    with pytest.raises(TypeError, match="run_dirs"):
        write_report([3])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_report([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither metrics"):
        write_report([empty])
    with pytest.raises(ValueError, match="layer 'nope' is not monitored"):
        write_report([a], out=tmp_path / "o", layer="nope")
    with pytest.raises(ValueError, match="window"):
        write_report([a], out=tmp_path / "o", window=0)
    with pytest.raises(TypeError, match="path"):
        figures.save_figure(figures.training_figure([a]), 5)
    with pytest.raises(TypeError, match="runs"):
        figures.training_figure(a)
    with pytest.raises(ValueError, match="2 panel"):
        figures.weight_norm_figure([a], axes=figures.training_figure([a]).axes[:1])


def test_figures_draw_on_given_axes_and_write_nothing(synthetic: dict, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    runs = [rundir.load_run(synthetic["base"] / n) for n in ("a", "b")]
    host = Figure(figsize=(12, 4))
    left, right = host.subplots(1, 2)
    assert figures.angular_update_comparison_figure(runs, axes=left) is host
    assert figures.training_figure(runs, axes=[left, right]) is host
    assert left.lines and right.lines  # drawn where asked
    new = figures.stage_ratio_figure(runs)
    assert isinstance(new, Figure) and new is not host and len(new.axes) == 2
    assert not list(tmp_path.iterdir())  # only a caller writes files
    path = figures.save_figure(new, tmp_path / "deep" / "stage.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_entry_point(synthetic: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = synthetic["stdout"]
    assert f"wrote {synthetic['out'] / 'report.html'}" in out
    assert "sgdm-a: median |RMS Δ/Δ* − 1| 4.00%, median |‖w‖/w* − 1| 3.50%, 3/5 layers in equilibrium" in out
    page = synthetic["page"].read_text("utf-8")
    assert "<title>Synthetic comparison</title>" in page
    assert "Single-layer figures show layer1.conv." in page
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    assert report_main(parser.parse_args([str(tmp_path / "missing")])) == 2
    assert "smdyn report:" in capsys.readouterr().err
    assert report_main(parser.parse_args([str(synthetic["base"] / "a"), "--layer", "nope"])) == 2
    assert "layer 'nope' is not monitored" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- browser

_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e.type)); }, true);
var __ce = console.error;
console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, " "));
  __ce.apply(console, arguments);
};
window.addEventListener("load", function () {
  var s = [];
  for (var i = 0; i < document.images.length; i++) {
    s.push(document.images[i].naturalWidth + "x" + document.images[i].naturalHeight);
  }
  document.documentElement.setAttribute("data-images", s.join(","));
  document.documentElement.setAttribute("data-errors", JSON.stringify(window.__errors));
});
</script>"""


def _render(page: Path, tmp: Path) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Opens a copy of ``page`` with a probe in headless Chromium: image natural sizes, page errors, and
    console lines Chromium logged as errors."""
    probe = tmp / f"probe-{page.parent.name}.html"
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<html[^>]*data-images="([^"]*)"', proc.stdout)
    assert m, "the probe did not run: " + proc.stdout[:300]
    sizes = [tuple(int(v) for v in s.split("x")) for s in m.group(1).split(",") if s]
    errs = re.search(r'data-errors="([^"]*)"', proc.stdout)
    errors = json.loads(errs.group(1).replace("&quot;", '"')) if errs else ["no error record"]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln and re.search(r"Uncaught|Error", ln)]
    return sizes, errors, console


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (Debian package 'chromium'; CI installs it)"
)


@needs_chromium
def test_probe_detects_broken_images_and_script_errors(tmp_path: Path) -> None:
    """The browser check itself can fail: a broken image and a thrown error are both seen."""
    bad = tmp_path / "bad" / "report.html"
    bad.parent.mkdir()
    bad.write_text(
        '<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA">'
        "<script>notDefined();</script></body></html>"
    )
    sizes, errors, console = _render(bad, tmp_path)
    assert sizes == [(0, 0)]
    assert any("notDefined" in e for e in errors)
    assert any("notDefined" in ln for ln in console)


@needs_chromium
@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_report_renders_in_headless_chromium(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    page: Path = request.getfixturevalue(which)["page"]
    sizes, errors, console = _render(page, tmp_path)
    n = len(list((page.parent / "figures").glob("*.png")))
    assert len(sizes) == n >= 5
    for (w, h), png in zip(sizes, sorted((page.parent / "figures").glob("*.png")), strict=False):
        assert w > 0 and h > 0, png
    expected = sorted(
        _png_size((page.parent / "figures" / f).read_bytes())
        for f in FIGURE_FILES
        if (page.parent / "figures" / f).exists()
    )
    assert sorted(sizes) == expected  # every embedded image decodes to its file's size
    assert errors == []
    assert console == []
