"""Conventions: paths, seeding, masks, checks, save_figure."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from minirl import checks, masks, paths, plotting, utils


def test_paths_are_repo_relative():
    assert (paths.REPO_ROOT / "pyproject.toml").exists()
    assert paths.DATA_DIR == paths.REPO_ROOT / "data"
    assert paths.relative(paths.FIGURES_DIR / "x.png") == "figures/x.png"


def test_seed_everything_is_reproducible():
    g1 = utils.seed_everything(7)
    a = torch.randn(3, generator=g1), torch.randn(3)
    g2 = utils.seed_everything(7)
    b = torch.randn(3, generator=g2), torch.randn(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_masked_reductions():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masks.masked_mean(x, m).item() == 2.5
    assert masks.masked_sum(x, m).item() == 10.0
    assert masks.masked_var(x, m).item() == pytest.approx(torch.tensor([1.0, 2, 3, 4]).var().item())
    torch.testing.assert_close(masks.masked_mean(x, m, dim=1), torch.tensor([1.5, 3.5]))
    with pytest.raises(ValueError, match="0/1"):
        masks.masked_mean(x, m * 2)
    with pytest.raises(ValueError, match="shape"):
        masks.masked_mean(x, m[:, :2])


def test_checks():
    with pytest.raises(ValueError, match="sum to 1"):
        checks.check_probability_vector(torch.tensor([0.2, 0.2]))
    with pytest.raises(ValueError, match="non-negative"):
        checks.check_probability_vector(torch.tensor([1.5, -0.5]))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        checks.check_finite(float("nan"), "loss")
    with pytest.raises(FloatingPointError, match="threshold"):
        checks.check_finite(torch.tensor(50.0), "approx_kl", threshold=10)
    checks.check_finite(1.0, "ok", threshold=10)


def test_save_figure(tmp_path, monkeypatch):
    # figures/ only while the committed outputs are produced (MINIRL_SAVE_FIGURES=1), else runs/figures/
    monkeypatch.setattr(plotting, "FIGURES_DIR", tmp_path / "figures")
    monkeypatch.setattr(plotting, "RUNS_DIR", tmp_path / "runs")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    monkeypatch.delenv("MINIRL_SAVE_FIGURES", raising=False)
    p = plotting.save_figure(fig, "test_fig")
    assert p == tmp_path / "runs" / "figures" / "test_fig.png" and p.stat().st_size > 0
    monkeypatch.setenv("MINIRL_SAVE_FIGURES", "1")
    p = plotting.save_figure(fig, "test_fig")
    assert p == tmp_path / "figures" / "test_fig.png" and p.stat().st_size > 0
    # a 256-colour palette PNG that looks like matplotlib's own 150-dpi RGBA render
    import io

    import numpy as np
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=plotting.DPI, bbox_inches="tight")
    raw.seek(0)
    with Image.open(p) as saved, Image.open(raw) as direct:
        assert saved.mode == "P" and saved.size == direct.size
        diff = np.abs(np.asarray(saved.convert("RGB"), float) - np.asarray(direct.convert("RGB"), float))
        white = saved.convert("RGB").getpixel((0, 0))
    assert white == (255, 255, 255) and diff.mean() < 1.0 and np.quantile(diff, 0.999) < 24
    with pytest.raises(ValueError):
        plotting.save_figure(fig, "x.png")
    plt.close(fig)


def test_progress_is_quiet_off_terminal(capsys):
    bar = utils.progress(range(3))
    assert list(bar) == [0, 1, 2]
    assert bar.disable  # pytest's stderr is not a terminal


def test_artifact_dir_goes_to_runs_unless_regenerating(monkeypatch):
    from minirl import paths

    monkeypatch.delenv(paths.REGENERATE_ENV, raising=False)
    assert paths.artifact_dir("tiny-sft") == paths.RUNS_DIR / "tiny-sft"
    monkeypatch.setenv(paths.REGENERATE_ENV, "1")
    assert paths.artifact_dir("tiny-sft") == paths.DATA_DIR / "tiny-sft"
    with pytest.raises(ValueError, match="relative name"):
        paths.artifact_dir("/etc")


def test_seed_everything_honours_omp_num_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        utils.seed_everything(0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_masked_sum_ignores_nan_and_inf_on_padding():
    import torch

    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("-inf"), 0.5]], requires_grad=True)
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    s = masks.masked_sum(x, m)
    assert s.item() == 6.5
    s.backward()
    assert torch.equal(x.grad, m.float())  # no NaN gradient through the padded entries
    assert masks.masked_mean(x.detach(), m).item() == 6.5 / 4


def test_losses_package_exports_everything_it_imports():
    from minirl import losses

    assert set(losses.__all__) == {n for n in dir(losses) if n.endswith("_loss")} | {"ranking_to_pairs"}


def test_check_prompts_rejects_a_bare_string():
    checks.check_prompts(["a", "b"])
    with pytest.raises(ValueError, match="got one str"):
        checks.check_prompts("write a review of the soup:")
    with pytest.raises(ValueError, match="non-empty list"):
        checks.check_prompts([])
    with pytest.raises(ValueError, match="non-empty str"):
        checks.check_prompts(["ok", ""])
