"""minirl.algos.sft: the package loop reproduces lesson 03's inline `train` bit for bit (same
batches, same seed), accumulation over micro-batches gives the one-pass step, the schedule,
and bad input raises ValueError."""

import pytest
import torch

from minirl import lm, models, world
from minirl import tokenizer as T
from minirl.algos import sft
from minirl.losses import sft_loss


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def lesson03_train(model, batches, lr=3e-3, warmup=50):
    """Lesson 03's inline loop, as written there (without its prints)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    n = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / n))
    model.train()
    history = []
    for ids, am, loss_mask in batches:
        loss = sft_loss(lm.sequence_logprobs(model, ids, am), loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        history.append(loss.item())
    model.eval()
    return history


def pt_batches(tok, n=4, B=4):
    docs = world.pretraining_corpus(n * B, (n * B) * 3 // 5, seed=0)
    out = []
    for i in range(0, len(docs), B):
        ids, am = T.encode_documents(tok, docs[i:i + B], max_len=40)
        mask = am.clone()
        mask[:, 0] = 0
        out.append((ids, am, mask))
    return out


def sft_batches(tok, n=4, B=4):
    data = world.instruction_pairs(n * B, seed=0)
    return [T.encode_prompt_response(tok, [d["prompt"] for d in data[i:i + B]],
                                     [d["response"] for d in data[i:i + B]], max_len=48)
            for i in range(0, len(data), B)]


@pytest.mark.parametrize("kind", ["pretraining", "sft"])
def test_package_loop_reproduces_lesson_03_bit_for_bit(tok, float64_default, kind):
    batches = pt_batches(tok) if kind == "pretraining" else sft_batches(tok)
    triples = [sft.as_batch(b) for b in batches]
    lr, warmup = (3e-3, 2) if kind == "pretraining" else (2e-3, 3)
    inline = tiny(tok)
    hist = lesson03_train(inline, triples, lr=lr, warmup=warmup)
    model = tiny(tok)
    cfg = sft.SFTConfig(lr=lr, warmup=warmup)
    rows = sft.train_sft(sft.init_sft(model, cfg, len(batches)), batches, cfg)
    assert [r["loss"] for r in rows] == hist
    for a, b in zip(inline.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert not model.training and rows[0]["lr"] == lr / warmup and rows[1]["step"] == 1
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_micro_batches_give_the_full_batch_step(tok, float64_default):
    batches = sft_batches(tok, n=2, B=6)
    for normalize in ("token", "sequence"):
        models_ = []
        for mbs in (None, 4):  # 6 rows as 4 + 2: unequal token counts
            m = tiny(tok)
            cfg = sft.SFTConfig(lr=1e-3, warmup=1, normalize=normalize, micro_batch_size=mbs, max_grad_norm=None)
            sft.train_sft(sft.init_sft(m, cfg, 2), batches, cfg)
            models_.append(m)
        for a, b in zip(*(m.parameters() for m in models_)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_bad_input_raises_value_errors(tok, float64_default):
    m = tiny(tok)
    b = pt_batches(tok, n=1)
    with pytest.raises(ValueError, match="lr"):
        sft.init_sft(m, sft.SFTConfig(lr=0), 1)
    with pytest.raises(ValueError, match="normalize"):
        sft.init_sft(m, sft.SFTConfig(normalize="mean"), 1)
    with pytest.raises(ValueError, match="n_steps"):
        sft.init_sft(m, sft.SFTConfig(), 0)
    cfg = sft.SFTConfig()
    state = sft.init_sft(m, cfg, 1)
    with pytest.raises(ValueError, match="list of batches"):
        sft.train_sft(state, "the soup", cfg)
    with pytest.raises(ValueError, match="n_steps = 3"):
        sft.train_sft(sft.init_sft(m, cfg, 3), b[:1], cfg)
    ids, am, mask = b[0]
    with pytest.raises(ValueError, match="shape of input_ids"):
        sft.sft_step(state, (ids, am, mask[:, 1:]), cfg)
    with pytest.raises(ValueError, match="integer"):
        sft.sft_step(state, (ids.double(), am, mask), cfg)
    with pytest.raises(ValueError, match="selects no token"):
        sft.sft_step(state, (ids, am, torch.zeros_like(mask)), cfg)
    with pytest.raises(ValueError, match="missing"):
        sft.sft_step(state, {"input_ids": ids}, cfg)
    sft.sft_step(state, b[0], cfg)
    with pytest.raises(ValueError, match="all done"):
        sft.sft_step(state, b[0], cfg)


def test_micro_batches_with_sum_normalization(tok, float64_default):
    batches = sft_batches(tok, n=2, B=6)
    models_ = []
    for mbs in (None, 4):
        m = tiny(tok)
        cfg = sft.SFTConfig(lr=1e-3, warmup=1, normalize="sum", micro_batch_size=mbs, max_grad_norm=None)
        sft.train_sft(sft.init_sft(m, cfg, 2), batches, cfg)
        models_.append(m)
    for a, b in zip(*(m.parameters() for m in models_)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _adam_constant(lr, **kw):
    return sft.SFTConfig(lr=lr, warmup=1, min_lr_ratio=1.0, adam_beta2=0.999, weight_decay=0.0, **kw)


def test_package_reproduces_the_r1_lessons_sft_bit_for_bit(tok, float64_default):
    # lesson 16's former inline loop: Adam, constant lr, clip 1, token mean, random minibatches
    from minirl.training import optimizer_step
    data = sft_batches(tok, n=1, B=12)[0]
    gen = torch.Generator().manual_seed(0)
    picks = [torch.randperm(12, generator=gen)[:4] for _ in range(5)]
    batches = [{k: v[i] for k, v in data.items()} for i in picks]
    inline = tiny(tok)
    opt = torch.optim.Adam(inline.parameters(), lr=2e-3)

    def loss_fn(m, mb):
        return sft_loss(lm.sequence_logprobs(m, mb["input_ids"], mb["attention_mask"]), mb["response_mask"]), {}

    inline.train()
    hist = [optimizer_step(inline, opt, [mb], loss_fn, max_grad_norm=1.0)["loss"] for mb in batches]
    model = tiny(tok)
    cfg = _adam_constant(2e-3, max_grad_norm=1.0)
    rows = sft.train_sft(sft.init_sft(model, cfg, len(batches)), batches, cfg)
    assert [r["loss"] for r in rows] == hist and all(r["lr"] == 2e-3 for r in rows)
    for a, b in zip(inline.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_package_reproduces_the_sequence_sum_sft_baseline_bit_for_bit(tok, float64_default):
    # lesson 12's former SFT baseline: AdamW without weight decay, clip, -mean sequence log-prob
    data = sft_batches(tok, n=1, B=12)[0]
    batches = [{k: v[i:i + 4] for k, v in data.items()} for i in (0, 4, 8, 0)]
    inline = tiny(tok).train()
    opt = torch.optim.AdamW(inline.parameters(), lr=1e-3, weight_decay=0.0)
    for mb in batches:
        lp = lm.sequence_logprobs(inline, mb["input_ids"], mb["attention_mask"])
        loss = -lm.sequence_sum(lp, mb["response_mask"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(inline.parameters(), 0.5)
        opt.step()
    model = tiny(tok)
    cfg = _adam_constant(1e-3, max_grad_norm=0.5, normalize="sum")
    sft.train_sft(sft.init_sft(model, cfg, len(batches)), batches, cfg)
    for a, b in zip(inline.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_a_given_optimizer_persists_and_keeps_its_lr(tok, float64_default):
    model = tiny(tok)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = sft.SFTConfig(max_grad_norm=None)
    state = sft.init_sft(model, cfg, 2, optimizer=opt)
    assert state.optimizer is opt and state.scheduler is None
    rows = sft.train_sft(state, sft_batches(tok, n=2, B=3), cfg)
    assert [r["lr"] for r in rows] == [0.05, 0.05]
    with pytest.raises(ValueError, match="optimizer"):
        sft.init_sft(model, cfg, 1, optimizer="adam")
