"""minirl.training: token-weighted accumulation equals the full-batch gradient, a resumed run is
bitwise the uninterrupted one (parameters and log), bad inputs raise ValueError, dtype/device
follow the model."""
import json
import random

import numpy as np
import pytest
import torch

from minirl import models, training, world
from minirl.lm import sequence_logprobs
from minirl.losses import sft_loss
from minirl.tokenizer import encode_documents


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=16, n_head=2, n_positions=64)


def lm_loss(model, mb):
    """Mean NLL over the real tokens after the first of each row (the micro-batch's units)."""
    lp = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"])
    mask = mb["attention_mask"].clone()
    mask[:, 0] = 0
    return sft_loss(lp, mask), {"tokens": float(mask.sum())}


def units(mb):
    return int(mb["attention_mask"][:, 1:].sum())


def docs(tok, n, seed=0):
    texts = world.pretraining_corpus(n, 0, seed=seed)
    ids, mask = encode_documents(tok, texts, max_len=40)
    return {"input_ids": ids, "attention_mask": mask}


def test_accumulation_over_unequal_micro_batches_is_the_full_batch_gradient(tok, float64_default):
    model = tiny(tok)
    batch = docs(tok, 11)
    # the full-batch token mean and its gradient
    model.zero_grad()
    full_loss, _ = lm_loss(model, batch)
    full_loss.backward()
    full = [p.grad.clone() for p in model.parameters()]
    # micro-batches of 1, 3, 7 rows: unequal rows AND unequal token counts
    cuts = [(0, 1), (1, 4), (4, 11)]
    mbs = [{k: v[a:b] for k, v in batch.items()} for a, b in cuts]
    w = [units(mb) for mb in mbs]
    assert len(set(w)) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = training.optimizer_step(model, opt, mbs, lm_loss, weights=w)
    for p, g in zip(model.parameters(), full):
        assert p.grad.dtype == torch.float64
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-10)
    assert abs(out["loss"] - float(full_loss.detach())) < 1e-10
    assert abs(out["grad_norm"] - float(torch.cat([g.flatten() for g in full]).norm())) < 1e-10
    assert out["tokens"] == pytest.approx(sum(x * x for x in w) / sum(w))  # weighted mean of a stat
    # unweighted accumulation (mean of micro-batch means) is NOT the token mean here
    training.optimizer_step(model, opt, mbs, lm_loss)
    diff = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), full))
    assert diff > 1e-6


def test_split_batch_and_clipping(tok, float64_default):
    model = tiny(tok)
    batch = docs(tok, 7)
    mbs = training.split_batch(batch, 3)
    assert [mb["input_ids"].shape[0] for mb in mbs] == [3, 3, 1]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = training.optimizer_step(model, opt, mbs, lm_loss, weights=[units(m) for m in mbs], max_grad_norm=1e-3)
    assert out["grad_norm"] > 1e-3  # measured before clipping
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())]).norm()
    assert abs(float(step) - 0.1 * 1e-3) < 1e-9  # SGD moved by lr * clipped norm
    assert out["lr"] == 0.1


def test_scheduler_is_stepped_and_lr_reported(tok, float64_default):
    model = tiny(tok)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    mb = training.split_batch(docs(tok, 2), 2)
    lrs = [training.optimizer_step(model, opt, mb, lm_loss, scheduler=sched)["lr"] for _ in range(3)]
    assert lrs == [1.0, 0.5, 0.25]


def test_bad_inputs_raise_value_errors(tok, float64_default):
    model = tiny(tok)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mbs = training.split_batch(docs(tok, 4), 2)
    with pytest.raises(ValueError, match="non-empty list"):
        training.optimizer_step(model, opt, [], lm_loss)
    with pytest.raises(ValueError, match="non-empty list"):
        training.optimizer_step(model, opt, mbs[0], lm_loss)  # a dict, not a list of micro-batches
    with pytest.raises(ValueError, match="one number per micro-batch"):
        training.optimizer_step(model, opt, mbs, lm_loss, weights=[1])
    with pytest.raises(ValueError, match="weights"):
        training.optimizer_step(model, opt, mbs, lm_loss, weights=[1, -1])
    with pytest.raises(ValueError, match="not all be 0"):
        training.optimizer_step(model, opt, mbs, lm_loss, weights=[0, 0])
    with pytest.raises(ValueError, match="max_grad_norm"):
        training.optimizer_step(model, opt, mbs, lm_loss, max_grad_norm=0)
    with pytest.raises(ValueError, match=r"\(loss, stats\)"):
        training.optimizer_step(model, opt, mbs, lambda m, b: lm_loss(m, b)[0])
    with pytest.raises(ValueError, match="0-d"):
        training.optimizer_step(model, opt, mbs, lambda m, b: (torch.zeros(2, requires_grad=True), {}))
    with pytest.raises(ValueError, match="autocast_dtype"):
        training.optimizer_step(model, opt, mbs, lm_loss, autocast_dtype="bf16")
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def nan_second(m, b):
        calls.append(1)
        return lm_loss(m, b)[0] * (float("nan") if len(calls) == 2 else 1.0), {}

    with pytest.raises(FloatingPointError, match="micro-batch 1"):
        training.optimizer_step(model, opt, mbs, nan_second)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # nothing stepped
    with pytest.raises(ValueError, match="size"):
        training.split_batch(docs(tok, 4), 0)
    with pytest.raises(ValueError, match="same first dimension"):
        training.split_batch({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)
    with pytest.raises(ValueError, match="step"):
        training.save_checkpoint("/nonexistent/never", model, opt, step=-1)
    with pytest.raises(ValueError, match="no checkpoint"):
        training.load_checkpoint("/nonexistent/never.pt", model)
    with pytest.raises(ValueError, match="resume_step"):
        training.start_run_log("/tmp/minirl-never.jsonl", resume_step=-2)


def test_everything_follows_the_model_dtype_and_device(tok, float64_default):
    model = tiny(tok)
    assert training.model_device(model) == torch.device("cpu")
    assert training.autocast_dtype_for("cpu") is None
    assert training.autocast_dtype_for("cuda") is torch.bfloat16
    seen = {}

    def loss_fn(m, mb):
        seen["device"] = {v.device for v in mb.values()}
        loss, stats = lm_loss(m, mb)
        seen["dtype"] = loss.dtype
        return loss, stats

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    training.optimizer_step(model, opt, training.split_batch(docs(tok, 4), 2), loss_fn)
    assert seen == {"device": {torch.device("cpu")}, "dtype": torch.float64}
    assert all(s.dtype == torch.float64 for st in opt.state.values() for s in st.values() if s.is_floating_point())
    # bf16 autocast on CPU only when asked: the forward runs in bf16, the parameters stay float64
    torch.set_default_dtype(torch.float32)
    m32 = tiny(tok)
    opt32 = torch.optim.SGD(m32.parameters(), lr=0.0)
    training.optimizer_step(m32, opt32, training.split_batch(docs(tok, 2), 2), loss_fn, autocast_dtype=torch.bfloat16)
    assert seen["dtype"] == torch.float32  # log_softmax is autocast to float32
    assert all(p.dtype == torch.float32 for p in m32.parameters())


def _train(tok, n_steps, ckpt_dir, log, stop_after=None, resume=False, restore_rng=True):
    """A tiny SFT run whose every step draws from torch's global RNG (token dropout), Python's
    random and NumPy (micro-batch size) and an explicit generator (data order)."""
    model = tiny(tok, seed=1 if resume else 0)  # a resumed run starts from other weights on purpose
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    gen = torch.Generator().manual_seed(0)
    data = docs(tok, 16)
    start = 0
    if resume:
        start = training.load_checkpoint(ckpt_dir / "ckpt.pt", model, opt, sched, generator=gen,
                                         restore_rng=restore_rng)["step"]
        training.start_run_log(log, resume_step=start)
    else:
        torch.manual_seed(0), random.seed(0), np.random.seed(0)
        training.start_run_log(log)

    def loss_fn(m, mb):
        lp = sequence_logprobs(m, mb["input_ids"], mb["attention_mask"])
        keep = torch.bernoulli(torch.full(lp.shape, 0.9))  # token dropout from the global RNG
        mask = mb["attention_mask"] * keep
        mask[:, 0] = 0
        return sft_loss(lp, mask), {"tokens": float(mask.sum())}

    for step in range(start, n_steps):
        idx = torch.randperm(16, generator=gen)[:8]
        batch = {k: v[idx] for k, v in data.items()}
        size = int(np.random.randint(2, 5)) + random.randint(0, 1)
        mbs = training.split_batch(batch, size)
        row = training.optimizer_step(model, opt, mbs, loss_fn, weights=[units(m) for m in mbs],
                                      max_grad_norm=1.0, scheduler=sched)
        training.append_jsonl(log, {"step": step, **row})
        if step + 1 == stop_after:
            training.save_checkpoint(ckpt_dir / "ckpt.pt", model, opt, sched, step=step + 1, generator=gen)
        if stop_after is not None and step + 1 == stop_after + 1:
            break  # "crashed" one step after the checkpoint, with that step already logged
    return model


def test_resume_from_checkpoint_is_bitwise_identical(tok, float64_default, tmp_path):
    straight = _train(tok, 6, tmp_path, tmp_path / "a.jsonl")
    _train(tok, 6, tmp_path, tmp_path / "b.jsonl", stop_after=3)
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 4  # one row past the checkpoint
    resumed = _train(tok, 6, tmp_path, tmp_path / "b.jsonl", resume=True)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    a, b = (tmp_path / "a.jsonl").read_text(), (tmp_path / "b.jsonl").read_text()
    assert a == b
    assert [json.loads(x)["step"] for x in a.splitlines()] == list(range(6))
    # the global RNG states matter: resuming without them gives other parameters
    (tmp_path / "c.jsonl").write_text(b)
    other = _train(tok, 6, tmp_path, tmp_path / "c.jsonl", resume=True, restore_rng=False)
    assert not all(torch.equal(p, q) for p, q in zip(straight.parameters(), other.parameters()))


def test_checkpoint_without_optimizer_cannot_restore_one(tok, float64_default, tmp_path):
    model = tiny(tok)
    training.save_checkpoint(tmp_path / "m.pt", model, step=0, extra={"note": "weights only", "xs": [1, 2]})
    out = training.load_checkpoint(tmp_path / "m.pt", tiny(tok, seed=3))
    assert out == {"step": 0, "extra": {"note": "weights only", "xs": [1, 2]}}
    with pytest.raises(ValueError, match="no optimizer"):
        training.load_checkpoint(tmp_path / "m.pt", model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_append_jsonl_is_reexported_by_rlhf():
    from minirl import rlhf
    assert rlhf.append_jsonl is training.append_jsonl


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_with_bf16_autocast_and_checkpoint_round_trip(tok, tmp_path):
    model = tiny(tok).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mbs = training.split_batch(docs(tok, 4), 2)  # CPU tensors: moved to the model's device
    dtype = training.autocast_dtype_for(training.model_device(model))
    assert dtype is torch.bfloat16
    out = training.optimizer_step(model, opt, mbs, lm_loss, weights=[units(m) for m in mbs], max_grad_norm=1.0,
                                  autocast_dtype=dtype)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters()) and out["grad_norm"] > 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    training.save_checkpoint(tmp_path / "c.pt", model, opt, step=1, generator=gen)
    other = tiny(tok, seed=5).cuda()
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    gen2 = torch.Generator(device="cuda")
    assert training.load_checkpoint(tmp_path / "c.pt", other, opt2, generator=gen2)["step"] == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    assert torch.equal(torch.rand(3, device="cuda", generator=gen), torch.rand(3, device="cuda", generator=gen2))
