"""Acceptance tests every training loop shares (issue 9):

  * a step of every loop with the model in float64 (torch's default dtype left at float32, so a
    tensor made "by default" shows up): every floating tensor the loop's own code creates has the
    model's dtype and device, and every torch.multinomial draws from a generator on its input's
    device (a CPU generator with CUDA probabilities fails on a GPU). Watched op by op with a
    TorchDispatchMode; a tensor is attributed to the innermost frame outside torch/transformers;
    the known exceptions outside the algorithm files are listed with their reason;
  * bad inputs to every trainer raise a clear ValueError;
  * a run stopped after step k and resumed from its checkpoint gives bitwise the same parameters
    and the same JSONL log as a run that never stopped (SFT, the DPO family, REINFORCE, GRPO, PPO
    with its critic, adaptive KL coefficient and frozen score normalization).
"""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import minirl
from minirl import dpo, models, rlhf, world
from minirl import reward_model as RM
from minirl.algos import dpo as A
from minirl.algos import grpo, reinforce, sft
from minirl.rollout import make_reference

PKG = str(Path(minirl.__file__).parent)
PROMPTS = [p["prompt"] for p in world.arithmetic_prompts(8, seed=3, levels=(1,))]
PAIRS = [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
         for a, b in zip(*(world.instruction_pairs(40, seed=3, arithmetic_fraction=0.0)[i::2] for i in (0, 1)))][:8]
DATA = world.instruction_pairs(8, seed=12, arithmetic_fraction=0.0)

# Tensors made outside the algorithm files in another dtype than the model's, on purpose (a
# violation is excused when any frame of its package call chain is listed here):
KNOWN = {
    ("rollout.py", "sample"): "Samples.response_mask is float32 whatever the model's dtype (documented there)",
    ("preference.py", "dpo_loss"): "reward_accuracy is logged in float32 (.float(); the lessons' logged "
                                   "accuracies depend on it)",
    ("preference.py", "bradley_terry_loss"): "the logged accuracy is float32 (.float()), as dpo_loss's",
    ("preference.py", "orpo_loss"): "reward_accuracy (logged) is float32, as dpo_loss's",
    ("preference.py", "simpo_loss"): "reward_accuracy (logged) is float32, as dpo_loss's",
    ("preference.py", "cpo_loss"): "reward_accuracy (logged) is float32, as dpo_loss's",
    ("preference.py", "rrhf_loss"): "pair_accuracy (logged) is a ratio of two counts: float32",
    ("lm.py", "_check_ids_and_mask"): "validation only: input_ids.float() to check the mask's 0/1 values",
    ("lm.py", "_check_generate_args"): "validation only: a (1, 2) dummy to check top_k / top_p",
}


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def short_reward(s):
    return (s.response_mask.sum(-1) <= 3).to(s.logprobs.dtype)


def creator():
    """The package frames, innermost first, of the code that asked for the tensor: (file name,
    function, line) for every frame in minirl/ (torch's and transformers' own frames skipped)."""
    f, out = sys._getframe(2), []
    while f is not None:
        if f.f_code.co_filename.startswith(PKG):
            out.append((Path(f.f_code.co_filename).name, f.f_code.co_name, f.f_lineno))
        f = f.f_back
    return out


class Watch(TorchDispatchMode):
    """Record every op run by package code that INTRODUCES a floating tensor whose dtype or device
    differs from the model's (a factory, a cast from ints or bools, a copy to another device: no
    input of the op has that dtype / device), and every multinomial draw with a generator on
    another device than its input. Constants torch makes from Python scalars (lift_fresh, e.g.
    Adam's float32 step counter) are not the loop's tensors and are skipped."""

    SKIP = {"lift_fresh", "lift_fresh_copy", "scalar_tensor"}

    def __init__(self, dtype, device):
        super().__init__()
        self.dtype, self.device, self.bad, self.ops = dtype, torch.device(device), [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is torch.ops.aten.multinomial:
            gen = kwargs.get("generator", args[3] if len(args) > 3 else None)
            if gen is not None and gen.device.type != args[0].device.type:
                self.bad.append((f"multinomial with a generator on {gen.device}", creator()))
        out = func(*args, **kwargs)
        self.ops += 1
        if func.overloadpacket.__name__ in self.SKIP:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        for t in tree_leaves(out):
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                continue
            new_dtype = t.dtype != self.dtype and not any(x.dtype == t.dtype for x in inputs)
            new_device = t.device.type != self.device.type and not any(x.device == t.device for x in inputs)
            if new_dtype or new_device:
                chain = creator()
                if chain:
                    self.bad.append((f"{func} -> {t.dtype} on {t.device}", chain))
        return out


@pytest.fixture
def float32_default():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _loops(tok, device):
    """Every training loop on a float64 model on `device`: name -> setup, where setup() builds the
    models and data (outside the watcher) and returns the step to watch."""
    def model(seed=0):
        return tiny(tok, seed).double().to(device)

    def sft_model():
        return models.load_policy(models.TINY_SFT_DIR)[0].double().to(device)  # samples that end

    def sft_setup():
        from minirl.tokenizer import encode_prompt_response
        d = world.instruction_pairs(4, seed=0)
        batch = encode_prompt_response(tok, [x["prompt"] for x in d], [x["response"] for x in d], max_len=40)
        cfg = sft.SFTConfig(warmup=1, micro_batch_size=2)
        state = sft.init_sft(model(), cfg, 1)
        return lambda: sft.train_sft(state, [batch], cfg)

    def preference(loss, **kw):
        def setup():
            cfg = A.PreferenceConfig(loss=loss, steps=1, batch_size=4, **kw)
            pol, ref = model(), make_reference(model())
            return lambda: A.train_preference(A.init_preference(pol, ref, tok, PAIRS, cfg), cfg)
        return setup

    def train_dpo_setup():
        pol, ref = model(), make_reference(model())
        return lambda: dpo.train_dpo(pol, ref, tok, PAIRS, dpo.DPOConfig(epochs=1, batch_size=8), eval_rows=PAIRS[:2])

    def reinforce_setup():
        cfg = reinforce.ReinforceConfig(n_updates=1, batch_size=4, max_new_tokens=4, kl_coef=0.1)
        state = reinforce.init_reinforce(model(), cfg)
        return lambda: reinforce.train_reinforce(state, tok, PROMPTS, short_reward, cfg)

    def grpo_setup():
        cfg = grpo.GRPOConfig(n_iterations=1, prompts_per_step=2, group_size=2, max_new_tokens=4, beta=0.04,
                              minibatch_size=2)
        state = grpo.init_grpo(model(), cfg)
        return lambda: grpo.train_grpo(state, tok, PROMPTS, short_reward, cfg)

    def ppo_setup():
        cfg = rlhf.PPOConfig(n_iterations=1, batch_size=4, minibatch_size=2, max_new_tokens=4, ppo_epochs=1)
        state = rlhf.init_ppo(model(), cfg)
        return lambda: rlhf.train_ppo(state, tok, PROMPTS, short_reward, cfg)

    def reward_model_setup():
        rm = models.ScalarHeadModel(tiny(tok).base_model).double().to(device)
        return lambda: RM.train_reward_model(rm, tok, PAIRS, RM.RewardModelConfig(epochs=1, batch_size=8))

    def online_setup():
        rm, pol = model(3), sft_model()
        ref = make_reference(pol)

        def score(ps, ys):
            enc = dpo.encode_preferences(tok, [{"prompt": p, "chosen": y, "rejected": y} for p, y in zip(ps, ys)])
            with torch.no_grad():
                return dpo.sequence_logps(rm, {k: v.to(device) for k, v in enc.items()})[:len(ps)]
        return lambda: A.online_dpo_round(pol, ref, tok, PROMPTS[:2], score, dpo.DPOConfig(epochs=1, batch_size=4),
                                          k=2, max_new_tokens=16, seed=0)

    def spin_setup():
        pol = sft_model()
        return lambda: A.spin_round(pol, tok, DATA[:3], dpo.DPOConfig(epochs=1, batch_size=4), max_new_tokens=16,
                                    seed=0)

    loops = {"sft": sft_setup, "train_dpo": train_dpo_setup, "reinforce": reinforce_setup, "grpo": grpo_setup,
             "ppo": ppo_setup, "reward_model": reward_model_setup, "online_dpo": online_setup, "spin": spin_setup}
    for loss in A.LOSSES:
        loops[f"preference_{loss}"] = preference(loss)
    loops["preference_kto_kl_precompute"] = preference("kto", kto_kl=True, reference="precompute")
    return loops


LOOP_NAMES = list(_loops(None, "cpu"))


def _check_loop(tok, name, device):
    step = _loops(tok, device)[name]()
    watch = Watch(torch.float64, device)
    with watch:
        step()
    assert watch.ops > 100  # the watcher saw the step
    own = [(what, chain[0]) for what, chain in watch.bad if not any(f[:2] in KNOWN for f in chain)]
    assert not own, f"{name}: tensors off the model's dtype/device:\n" + "\n".join(map(str, own[:10]))


@pytest.mark.parametrize("name", LOOP_NAMES)
def test_every_loop_follows_the_model_dtype_and_device(tok, float32_default, name):
    _check_loop(tok, name, "cpu")


def test_the_watcher_catches_a_default_dtype_tensor(float32_default):
    watch = Watch(torch.float64, "cpu")
    code = compile("y = torch.zeros(3) + x", f"{PKG}/fake.py", "exec")  # as if written in the package
    with watch:
        exec(code, {"torch": torch, "x": torch.ones(3, dtype=torch.float64)})
    assert any("float32" in what and chain[0][0] == "fake.py" for what, chain in watch.bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOOP_NAMES)
def test_every_loop_runs_on_cuda(tok, float32_default, name):
    _check_loop(tok, name, "cuda")


# ------------------------------------------------------------------------------ bad input


def test_every_trainer_rejects_bad_input_with_a_value_error(tok, float64_default):
    pol = tiny(tok)
    ref = make_reference(pol)
    cases = {
        "train_sft: a str as batches": lambda: sft.train_sft(sft.init_sft(pol, sft.SFTConfig(), 1), "text",
                                                              sft.SFTConfig()),
        "train_sft: bad config": lambda: sft.init_sft(pol, sft.SFTConfig(warmup=0), 1),
        "train_preference: columnar rows": lambda: A.init_preference(
            pol, ref, tok, {"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]}, A.PreferenceConfig()),
        "train_preference: unknown loss": lambda: A.init_preference(pol, ref, tok, PAIRS, A.PreferenceConfig(loss="x")),
        "train_dpo: columnar rows": lambda: dpo.train_dpo(pol, ref, tok, {"prompt": ["a"], "chosen": [" b"],
                                                                          "rejected": [" c"]}),
        "train_dpo: beta 0": lambda: dpo.train_dpo(pol, ref, tok, PAIRS, dpo.DPOConfig(beta=0)),
        "train_reinforce: a str as prompts": lambda: reinforce.train_reinforce(
            reinforce.init_reinforce(pol, reinforce.ReinforceConfig()), tok, "Q: 1+1=?", short_reward,
            reinforce.ReinforceConfig()),
        "train_reinforce: bad config": lambda: reinforce.init_reinforce(pol, reinforce.ReinforceConfig(lr=-1)),
        "train_grpo: a str as prompts": lambda: grpo.train_grpo(
            grpo.init_grpo(pol, grpo.GRPOConfig()), tok, "Q: 1+1=?", short_reward, grpo.GRPOConfig()),
        "train_grpo: bad config": lambda: grpo.init_grpo(pol, grpo.GRPOConfig(group_size=1)),
        "train_ppo: a str as prompts": lambda: rlhf.train_ppo(
            rlhf.init_ppo(pol, rlhf.PPOConfig()), tok, "Q: 1+1=?", short_reward, rlhf.PPOConfig()),
        "train_ppo: bad config": lambda: rlhf.init_ppo(pol, rlhf.PPOConfig(batch_size=3, minibatch_size=2)),
        "train_reward_model: columnar rows": lambda: RM.train_reward_model(
            models.ScalarHeadModel(tiny(tok).base_model), tok, {"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]}),
        "train_reward_model: no rows": lambda: RM.train_reward_model(models.ScalarHeadModel(tiny(tok).base_model),
                                                                     tok, []),
        "online_dpo_round: a str as prompts": lambda: A.online_dpo_round(
            pol, ref, tok, "write a review:", lambda p, y: [0.0] * len(p), dpo.DPOConfig(), k=2, max_new_tokens=4,
            seed=0),
        "spin_round: rows without responses": lambda: A.spin_round(pol, tok, PAIRS, dpo.DPOConfig(),
                                                                    max_new_tokens=4, seed=0),
    }
    for what, call in cases.items():
        with pytest.raises(ValueError) as err:
            call()
        assert len(str(err.value)) > 20, what  # says what was expected


# ------------------------------------------------------------------------------ stop and resume


def _sft_run(tok, tmp, log, max_steps=None, resume=False):
    docs = world.pretraining_corpus(24, 12, seed=0)
    from minirl import tokenizer as T
    batches = []
    for i in range(0, 24, 4):
        ids, am = T.encode_documents(tok, docs[i:i + 4], max_len=32)
        mask = am.clone()
        mask[:, 0] = 0
        batches.append((ids, am, mask))
    cfg = sft.SFTConfig(lr=2e-3, warmup=2, micro_batch_size=3)
    state = sft.init_sft(tiny(tok, seed=4 if resume else 0), cfg, len(batches))
    if resume:
        sft.resume_sft(state, tmp / "ckpt.pt")
    sft.train_sft(state, batches, cfg, log_path=log, checkpoint_path=tmp / "ckpt.pt", checkpoint_every=2,
                  max_steps=max_steps)
    return state.model, state


def _dpo_run(tok, tmp, log, max_steps=None, resume=False, sampling="epochs"):
    cfg = A.PreferenceConfig(loss="dpo", sampling=sampling, epochs=2, steps=5, batch_size=3, lr=1e-3,
                             reference="precompute" if sampling == "epochs" else "per_batch")
    state = A.init_preference(tiny(tok, seed=4 if resume else 0), make_reference(tiny(tok)), tok, PAIRS, cfg)
    if resume:
        A.resume_preference(state, tmp / "ckpt.pt")
    A.train_preference(state, cfg, log_path=log, checkpoint_path=tmp / "ckpt.pt", checkpoint_every=2,
                       max_steps=max_steps)
    return state.policy, state


def _reinforce_run(tok, tmp, log, max_steps=None, resume=False):
    cfg = reinforce.ReinforceConfig(n_updates=5, batch_size=4, max_new_tokens=5, lr=1e-3, kl_coef=0.1)
    state = reinforce.init_reinforce(tiny(tok, seed=4 if resume else 0), cfg, ref_model=make_reference(tiny(tok)))
    if resume:
        reinforce.resume_reinforce(state, tmp / "ckpt.pt")
    reinforce.train_reinforce(state, tok, PROMPTS, low_ids, cfg, log_path=log, checkpoint_path=tmp / "ckpt.pt",
                              checkpoint_every=2, max_steps=max_steps)
    return state.policy, state


def low_ids(s):
    """A reward with spread for a random model: the fraction of response tokens with a low id."""
    m = s.response_mask.to(s.logprobs.dtype)
    return ((s.response_ids < 300).to(m.dtype) * m).sum(-1) / m.sum(-1)


def _grpo_run(tok, tmp, log, max_steps=None, resume=False):
    cfg = grpo.GRPOConfig(n_iterations=5, prompts_per_step=2, group_size=3, max_new_tokens=5, lr=1e-3, beta=0.04,
                          minibatch_size=3, num_iterations=2)
    state = grpo.init_grpo(tiny(tok, seed=4 if resume else 0), cfg, ref_model=make_reference(tiny(tok)))
    if resume:
        grpo.resume_grpo(state, tmp / "ckpt.pt")
    grpo.train_grpo(state, tok, PROMPTS, low_ids, cfg, log_path=log, resume=resume, checkpoint_path=tmp / "ckpt.pt",
                    checkpoint_every=2, max_steps=max_steps)
    return state.policy, state


def _ppo_run(tok, tmp, log, max_steps=None, resume=False):
    cfg = rlhf.PPOConfig(n_iterations=5, batch_size=4, minibatch_size=2, max_new_tokens=5, lr=1e-3,
                         adaptive_kl=True, kl_target=0.01, normalize_scores=True)
    state = rlhf.init_ppo(tiny(tok, seed=4 if resume else 0), cfg, ref_model=make_reference(tiny(tok)))
    if resume:
        rlhf.resume_ppo(state, tmp / "ckpt.pt")
    rlhf.train_ppo(state, tok, PROMPTS, low_ids, cfg, log_path=log, resume=resume, checkpoint_path=tmp / "ckpt.pt",
                   checkpoint_every=2, max_steps=max_steps)
    return torch.nn.ModuleDict({"policy": state.policy, "critic": state.critic}), state


RUNS = {"sft": _sft_run, "grpo": _grpo_run, "ppo": _ppo_run, "dpo_epochs": _dpo_run,
        "dpo_replacement": lambda *a, **k: _dpo_run(*a, **k, sampling="replacement"), "reinforce": _reinforce_run}


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize("k", [2, 3])
def test_stop_at_step_k_and_resume_is_bitwise(tok, float64_default, tmp_path, name, k):
    run = RUNS[name]
    straight, _ = run(tok, tmp_path / "a", tmp_path / "a.jsonl")
    run(tok, tmp_path / "b", tmp_path / "b.jsonl", max_steps=k)  # then the process "dies"
    resumed, state = run(tok, tmp_path / "b", tmp_path / "b.jsonl", resume=True)
    for (n, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, q) for p, q in zip(straight.parameters(), tiny(tok).parameters()))  # it trained
    drop_times = lambda path: [{key: v for key, v in json.loads(line).items() if not key.startswith("time_")}
                               for line in path.read_text().splitlines()]
    a, b = drop_times(tmp_path / "a.jsonl"), drop_times(tmp_path / "b.jsonl")
    assert a == b and len(a) == 5 + (name == "sft") + (name == "dpo_epochs") * 1  # 6 SFT batches, 6 DPO steps
    assert a == [{key: v for key, v in r.items() if not key.startswith("time_")} for r in state.history]
