"""minirl.algos.dpo: the DPO-family loop reproduces lesson 11's inline `train_family` (every loss)
and its KTO-with-z_ref loop bit for bit; minirl.dpo.train_dpo (now this loop with loss="dpo")
reproduces the loop it replaced bit for bit; online-DPO and SPIN rounds reproduce lesson 12's
inline code; bad input raises ValueError."""
import math

import pytest
import torch

from minirl import dpo, models, world
from minirl import reward_model as RM
from minirl.algos import dpo as A
from minirl.lm import sequence_logprobs, sequence_mean, sequence_sum
from minirl.losses import cpo_loss, dpo_loss, ipo_loss, kto_loss, orpo_loss, rrhf_loss, simpo_loss
from minirl.rollout import make_reference

REVIEWS = world.instruction_pairs(200, seed=3, arithmetic_fraction=0.0)
ROWS = [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
        for a, b in zip(REVIEWS[0::2], REVIEWS[1::2])][:24]


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


# ---------------------------------------------------------------- lesson 11's inline code, as written there


def batch_scores(tok, model, batch_rows):
    enc = dpo.encode_preferences(tok, batch_rows)
    lp = sequence_logprobs(model, enc["input_ids"], enc["attention_mask"])
    s, m, n = sequence_sum(lp, enc["response_mask"]), sequence_mean(lp, enc["response_mask"]), len(batch_rows)
    return s[:n], s[n:], m[:n], m[n:]


def family_loss(method, pol, ref):
    (sw, sl, mw, ml), (rw, rl, _, _) = pol, ref
    one, zero = torch.ones_like(mw), torch.zeros_like(mw)
    return {
        "dpo": lambda: dpo_loss(sw, sl, rw, rl, beta=0.1),
        "ipo": lambda: ipo_loss(sw, sl, rw, rl, tau=0.1),
        "kto": lambda: kto_loss(torch.cat([sw, sl]), torch.cat([rw, rl]), torch.cat([one, zero]).bool(), beta=0.1),
        "orpo": lambda: orpo_loss(mw, ml, lam=0.1),
        "simpo": lambda: simpo_loss(mw, ml, beta=2.0, gamma=1.0),
        "cpo": lambda: cpo_loss(sw, sl, beta=0.1, alpha=1.0),
        "rrhf": lambda: rrhf_loss(torch.stack([mw, ml], 1), torch.stack([one, zero], 1),
                                  sft_logps=torch.stack([sw, sl], 1)),
        "sft": lambda: (-sw.mean(), None),
    }[method]()[0]


def plan(tok, ref_model, rows, steps, batch_size, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        mb = [rows[i] for i in torch.randint(len(rows), (batch_size,), generator=gen).tolist()]
        with torch.no_grad():
            out.append((mb, batch_scores(tok, ref_model, mb)))
    return out


def train_family(tok, policy, method, batches, lr=2e-4, max_grad_norm=1.0):
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    margins = []
    for mb, ref in batches:
        pol = batch_scores(tok, policy, mb)
        margins.append(((pol[0] - ref[0]) - (pol[1] - ref[1])).detach())
        loss = family_loss(method, pol, ref)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
    return policy.eval(), margins


def mismatched(mb):
    return [{"prompt": r["prompt"], "chosen": q["chosen"], "rejected": q["rejected"]}
            for r, q in zip(mb, mb[-1:] + mb[:-1])]


def train_kto_zref(tok, policy, ref_model, batches, lr=2e-4, max_grad_norm=1.0):
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    zs = []
    for mb, (rw, rl, _, _) in batches:
        sw, sl, _, _ = batch_scores(tok, policy, mb)
        with torch.no_grad():
            kl_pol, kl_ref = (torch.cat(batch_scores(tok, m, mismatched(mb))[:2]) for m in (policy, ref_model))
        labels = torch.cat([torch.ones_like(sw), torch.zeros_like(sl)]).bool()
        loss, stats = kto_loss(torch.cat([sw, sl]), torch.cat([rw, rl]), labels, kl_pol, kl_ref, beta=0.1)
        zs.append(float(stats["kl"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
    return policy.eval(), zs


@pytest.mark.parametrize("method", A.LOSSES)
def test_family_loop_reproduces_lesson_11_bit_for_bit(tok, float64_default, method):
    ref_model = make_reference(tiny(tok))
    cfg = A.PreferenceConfig(loss=method, steps=3, batch_size=6, lr=1e-3, seed=1)
    inline, margins = train_family(tok, tiny(tok), method, plan(tok, ref_model, ROWS, 3, 6, 1), lr=1e-3)
    policy = tiny(tok)
    state = A.init_preference(policy, ref_model, tok, ROWS, cfg)
    seen = []
    rows = A.train_preference(state, cfg, callback=lambda st, row: seen.append(
        (st.last[0].chosen - st.last[1].chosen) - (st.last[0].rejected - st.last[1].rejected)))
    for a, b in zip(inline.parameters(), policy.parameters()):
        assert torch.equal(a, b), method
    assert all(torch.equal(a, b) for a, b in zip(margins, seen))
    assert [r["step"] for r in rows] == [0, 1, 2] and not policy.training
    for k in A.DPO_STEP_KEYS + ("grad_norm",):
        assert all(math.isfinite(r[k]) for r in rows), k


def test_kto_with_z_ref_reproduces_lesson_11(tok, float64_default):
    ref_model = make_reference(tiny(tok))
    inline, zs = train_kto_zref(tok, tiny(tok), ref_model, plan(tok, ref_model, ROWS, 3, 6, 2), lr=1e-3)
    policy = tiny(tok)
    cfg = A.PreferenceConfig(loss="kto", kto_kl=True, steps=3, batch_size=6, lr=1e-3, seed=2)
    rows = A.train_preference(A.init_preference(policy, ref_model, tok, ROWS, cfg), cfg)
    for a, b in zip(inline.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    assert [r["kl"] for r in rows] == zs and zs[0] == 0.0


def old_train_dpo(policy, ref_model, tok, rows, cfg, eval_rows, callback):
    """minirl.dpo.train_dpo as it was before it delegated to minirl.algos.dpo."""
    batch = dpo.encode_preferences(tok, rows, cfg.max_len)
    ref = dpo._all_logps(ref_model, batch)
    B = len(rows)
    ev_batch = dpo.encode_preferences(tok, eval_rows, cfg.max_len)
    ev = (eval_rows, ev_batch, dpo._all_logps(ref_model, ev_batch))

    def eval_stats():
        e = dpo.implicit_rewards(policy, ref_model, tok, ev[0], cfg.beta, batch=ev[1], ref_logps=ev[2])
        return {"eval_accuracy": e["accuracy"], "eval_margin": e["margin"],
                "eval_chosen_logps": float(e["chosen_logps"].mean()),
                "eval_rejected_logps": float(e["rejected_logps"].mean())}

    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    history, buf, step = [{"step": 0, "epoch": 0, **eval_stats()}], [], 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(B, generator=g)
        for s in range(0, B, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            mb = dpo._select(batch, torch.cat([idx, idx + B]))
            buf.append(dpo.dpo_step(policy, opt, mb, ref[idx], ref[idx + B], cfg))
            step += 1
            callback(step, policy)
            policy.train()
            if step % cfg.log_every == 0:
                mean = {k: sum(d[k] for d in buf) / len(buf) for k in buf[0]}
                history.append({"step": step, "epoch": epoch, **mean, **eval_stats()})
                buf = []
    policy.eval()
    return history


@pytest.mark.parametrize("kw", [{}, {"loss_type": "ipo", "max_grad_norm": math.inf, "weight_decay": 0.1},
                                {"label_smoothing": 0.1, "batch_size": 7}])
def test_train_dpo_reproduces_the_loop_it_replaced(tok, float64_default, kw):
    ref_model = make_reference(tiny(tok))
    cfg = dpo.DPOConfig(**{"lr": 1e-3, "epochs": 2, "batch_size": 8, "log_every": 2, "seed": 3, **kw})
    a, b = tiny(tok), tiny(tok)
    held = [{**r, "gold_chosen": 1.0, "gold_rejected": float(i % 3 - 1)} for i, r in enumerate(ROWS[:5])]
    seen = {"old": [], "new": []}

    def probe(key):  # a callback that samples, as lessons 10-12's do (it must change nothing)
        def cb(step, policy):
            policy.eval()
            seen[key].append((step, lm_sample(policy)))
        return cb

    def lm_sample(policy):
        from minirl.rollout import sample
        return sample(policy, tok, ["write a review of the soup:"], 4, generator=torch.Generator().manual_seed(0)).responses

    old = old_train_dpo(a, ref_model, tok, ROWS, cfg, held, probe("old"))
    new = dpo.train_dpo(b, ref_model, tok, ROWS, cfg, eval_rows=held, callback=probe("new"))
    assert new == old and len(new) > 2 and "eval_accuracy" in new[-1] and "gold_accuracy" not in new[-1]
    assert seen["new"] == seen["old"]
    assert [s for s, _ in seen["new"]] == list(range(1, 2 * math.ceil(len(ROWS) / cfg.batch_size) + 1))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_custom_loss_fn(tok, float64_default):
    ref_model = make_reference(tiny(tok))
    cfg = A.PreferenceConfig(steps=2, batch_size=4, lr=1e-3)
    a, b = tiny(tok), tiny(tok)
    A.train_preference(A.init_preference(a, ref_model, tok, ROWS, cfg), cfg)
    A.train_preference(A.init_preference(b, ref_model, tok, ROWS, cfg), cfg,
                       loss_fn=lambda p, r, c: dpo_loss(p.chosen, p.rejected, r.chosen, r.rejected, beta=c.beta))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- lesson 12's rounds


def sample_complete_inline(tok, policy, prompts, k, seed, max_new):
    texts, cut = RM.sample_responses(policy, tok, prompts, k, max_new_tokens=max_new, return_truncated=True,
                                     generator=torch.Generator().manual_seed(seed))
    kept = [[y for y, c in zip(ys, cs) if not c] for ys, cs in zip(texts, cut)]
    return kept, sum(map(sum, cut)) / (len(prompts) * k)


def test_online_dpo_and_spin_rounds_reproduce_lesson_12(tok, float64_default):
    sft = lambda: models.load_policy(models.TINY_SFT_DIR)[0]  # samples that end (a random model never stops)
    ref_model = make_reference(sft())
    rm = tiny(tok, seed=9)  # a stand-in "reward model": the log-prob of the response under another LM

    def score(ps, ys):
        enc = dpo.encode_preferences(tok, [{"prompt": p, "chosen": y, "rejected": y} for p, y in zip(ps, ys)])
        with torch.no_grad():
            return dpo.sequence_logps(rm, enc)[:len(ps)]

    prompts = [p["prompt"] for p in world.review_instruction_prompts(4, seed=1)]
    cfg = dpo.DPOConfig(beta=0.1, lr=1e-3, epochs=1, batch_size=4, log_every=1, seed=0)
    # online: sample from the current policy, label by rank-and-pair, train_dpo against the SFT reference
    inline = sft()
    kept, rate = sample_complete_inline(tok, inline, prompts, 3, 5, 48)
    flat_p = [p for p, ys in zip(prompts, kept) for _ in ys]
    flat_y = [y for ys in kept for y in ys]
    table = dict(zip(zip(flat_p, flat_y), score(flat_p, flat_y).tolist()))
    pairs = [r for p, ys in zip(prompts, kept) if len(ys) >= 2
             for r in RM.preference_pairs([p], [ys], gold_fn=lambda p, y: table[(p, y)])]
    dpo.train_dpo(inline, ref_model, tok, pairs, cfg)
    policy = sft()
    out = A.online_dpo_round(policy, ref_model, tok, prompts, score, cfg, k=3, max_new_tokens=48, seed=5)
    assert out["truncated"] == rate and len(out["rows"]) == len(pairs) > 0
    assert [(r["chosen"], r["rejected"]) for r in out["rows"]] == [(r["chosen"], r["rejected"]) for r in pairs]
    for p, q in zip(inline.parameters(), policy.parameters()):
        assert torch.equal(p, q)
    # SPIN: pi_{theta_t} is sampler and reference; chosen = the data, rejected = its own sample
    data = [r for r in world.instruction_pairs(40, seed=12, arithmetic_fraction=0.0)][:6]
    inline = sft()
    prev = make_reference(inline)
    own, rate = sample_complete_inline(tok, prev, [r["prompt"] for r in data], 1, 7, 48)
    rows = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": y[0]} for r, y in zip(data, own) if y]
    dpo.train_dpo(inline, prev, tok, rows, cfg)
    policy = sft()
    out = A.spin_round(policy, tok, data, cfg, max_new_tokens=48, seed=7)
    assert out["rows"] == rows and out["truncated"] == rate and out["steps"] == math.ceil(len(rows) / 4)
    for p, q in zip(inline.parameters(), policy.parameters()):
        assert torch.equal(p, q)


def test_bad_input_raises_value_errors(tok, float64_default):
    pol, ref = tiny(tok), make_reference(tiny(tok))
    for kw, msg in [({"loss": "slic"}, "loss must be one of"), ({"beta": 0}, "beta"), ({"batch_size": 0}, "batch_size"),
                    ({"sampling": "shuffle"}, "sampling"), ({"reference": "none"}, "reference"),
                    ({"kto_kl": True}, "kto_kl"), ({"dpo_loss_type": "robust"}, "dpo_loss_type"),
                    ({"max_grad_norm": 0}, "max_grad_norm")]:
        with pytest.raises(ValueError, match=msg):
            A.init_preference(pol, ref, tok, ROWS, A.PreferenceConfig(**kw))
    cfg = A.PreferenceConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match="list of row dicts"):
        A.init_preference(pol, ref, tok, {"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}, cfg)
    with pytest.raises(ValueError, match="missing"):
        A.init_preference(pol, ref, tok, [{"prompt": "a", "chosen": " b"}], cfg)
    with pytest.raises(ValueError, match="empty"):
        A.init_preference(pol, ref, tok, [], cfg)
    with pytest.raises(ValueError, match="PreferenceConfig"):
        A.init_preference(pol, ref, tok, ROWS, dpo.DPOConfig())
    state = A.init_preference(pol, ref, tok, ROWS, cfg)
    A.preference_step(state, cfg)
    with pytest.raises(ValueError, match="all done"):
        A.preference_step(state, cfg)
    with pytest.raises(ValueError, match="list of str"):
        A.online_dpo_round(pol, ref, tok, "write a review:", lambda p, y: [0.0] * len(p), dpo.DPOConfig(),
                           k=2, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        A.online_dpo_round(pol, ref, tok, ["write a review:"], lambda p, y: [0.0] * len(p), dpo.DPOConfig(),
                           k=1, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="missing"):
        A.spin_round(pol, tok, ROWS, dpo.DPOConfig(), max_new_tokens=4, seed=0)
