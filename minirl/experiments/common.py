"""The shared layer of the experiment scripts: config and presets, command line, FLOPs and MFU,
the memory arithmetic of each method, phase timers, peak memory, processes (lesson 17).

    ExperimentConfig                 one flat dataclass; PRESETS["tiny" | "gpt2"] and per-method
                                     overrides fill it, command-line flags override those
    parse_config(argv, task, methods)   --preset, --method and one flag per field -> config
    gpt2_param_count(cfg)            parameters of a GPT-2 config, counted from its shapes
    flop_params(cfg)                 N of the FLOP count: the parameters without the position
                                     embedding (llm.c's convention; the tied LM head is a matmul)
    flops_per_token(cfg, seq_len, kind)   "train": 6N + 12 L d T, "forward": 2N + 4 L d T
    PEAK_TFLOPS, peak_tflops(device, override)   dense bf16 peaks from vendor datasheets
    mfu(flops, seconds, peak, n_devices)   achieved / peak; None when the peak is unknown
    memory_breakdown(method, ...)    bytes of weights, gradients, Adam, reference, critic,
                                     reward model, activations, KV cache for one method
    kv_cache_bytes, activation_bytes_estimate   the two terms that grow with batch and length
    PhaseTimer                       wall seconds per phase (CUDA synchronized)
    peak_memory_mib(device)          CUDA max allocated, or the process's peak RSS on CPU
    Dist                             rank / world size / accelerate's Accelerator (or none)
    combine_rows(rows), finish_row   the reduction of the logged metrics over processes

FLOPs per token (Kaplan et al. 2020; Chowdhery et al. 2022, appendix B; llm.c): a forward pass
costs 2 FLOPs per parameter per token (one multiply, one add) plus the attention scores and
their weighted sum, 2 * 2 * L * d * T per token for a context of T; the backward pass costs twice
the forward. So training costs 6N + 12 L d T per token and a forward (reference, reward model,
one generated token with the KV cache over a context of T) 2N + 4 L d T. MFU is the model FLOPs of
the update phase over its wall time and the devices' peak; on a CPU there is no meaningful peak in
the table, so MFU is None ("n/a") unless --peak-tflops is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import resource
import time
import typing
from dataclasses import dataclass

import torch

# ------------------------------------------------------------------------------ config

METHODS_SENTIMENT = ("ppo", "dpo", "rloo", "grpo", "best_of_n")
METHODS_RLVR = ("grpo", "rloo")


@dataclass
class ExperimentConfig:
    """Every knob of an experiment run, flat. A preset fills them; flags override."""

    preset: str = "tiny"
    """"tiny" (the shipped tiny model, tiny-world prompts, the gold scorer; CPU, seconds) or
    "gpt2" (GPT-2 124M, IMDB prompts, the DistilBERT IMDB classifier; a GPU)"""
    method: str = "grpo"
    """ppo, dpo, rloo, grpo, best_of_n (sentiment); grpo, rloo (rlvr)"""
    model: str = ""
    """policy: a local save_pretrained folder or a hub id ("" = the preset's)"""
    reward: str = ""
    """"gold" (the tiny world's scorer) or a sequence-classifier folder / hub id"""
    dataset: str = ""
    """"tiny-world", "imdb" (datasets.load_dataset), or a local .jsonl / datasets folder"""
    random_init: str = ""
    """"" or "124m": replace the policy by a randomly initialised GPT-2 124M body (12 layers,
    width 768, 12 heads) sized to the tokenizer; for timing the 124M shapes without the hub"""
    steps: int = 4
    """steps (rollout + update cycles; best_of_n: sampling rounds)"""
    prompts_per_step: int = 4
    """distinct prompts per step (all processes together)"""
    group_size: int = 4
    """responses per prompt: G of rloo/grpo, n of best_of_n; ppo samples 1, dpo 2"""
    max_new_tokens: int = 16
    """response length limit"""
    prompt_tokens: int = 8
    """IMDB prompts: the first this many tokens of a review"""
    temperature: float = 1.0
    lr: float = 1e-4
    """Adam learning rate"""
    kl_coef: float = 0.05
    """beta: PPO's KL penalty (initial value if adaptive), GRPO's k3 coefficient, DPO's beta"""
    adaptive_kl: bool = False
    """PPO: the adaptive KL controller (Ziegler et al. 2019), target kl_target nats"""
    kl_target: float = 6.0
    ppo_epochs: int = 1
    """PPO: passes over each rollout"""
    vf_coef: float = 0.1
    clip_eps: float = 0.2
    loss_type: str = "dapo"
    """grpo_loss normalizer for rloo/grpo ("dapo": the token mean of the whole batch)"""
    minibatch_size: int = 0
    """responses (dpo: pairs) per optimizer step; 0 = the whole batch of the step"""
    micro_batch_size: int = 8
    """responses (dpo: pairs) per forward/backward; gradients are accumulated over micro-batches,
    weighted by their units (tokens or responses), so the step equals the full-batch one"""
    max_grad_norm: float = 1.0
    dtype: str = "float32"
    """parameter dtype: float32 (with bf16 autocast on CUDA) or float64 (the CPU lessons)"""
    device: str = ""
    """"" = cuda if available (the process's own GPU under accelerate), else cpu"""
    seed: int = 0
    checkpoint_every: int = 0
    """save a checkpoint every this many steps (and at the end); 0 = only at the end"""
    out_dir: str = ""
    """where the log, config, checkpoint and evaluation go ("" = runs/17/<task>-<preset>-<method>)"""
    resume: bool = False
    """continue from out_dir/checkpoint.pt: same parameters, RNG states and log as an unbroken run"""
    eval_prompts: int = 16
    """held-out prompts for the final evaluation (one sample each); 0 = no evaluation"""
    peak_tflops: typing.Optional[float] = None
    """the device's peak in TFLOP/s for MFU (default: the table, by device name)"""
    progress: bool = True
    """a tqdm bar (shown on a terminal only)"""


_TINY_SENTIMENT = dict(model="data/tiny-sft", reward="gold", dataset="tiny-world", dtype="float64", device="cpu",
                       steps=4, prompts_per_step=4, group_size=4, max_new_tokens=16, micro_batch_size=8,
                       eval_prompts=16)
PRESETS = {
    "tiny": {
        "base": _TINY_SENTIMENT,
        "ppo": dict(lr=3e-4, kl_coef=0.05, ppo_epochs=2, prompts_per_step=8),
        "dpo": dict(lr=2e-4, kl_coef=0.1, prompts_per_step=8),
        "rloo": dict(lr=1e-4, kl_coef=0.0),
        "grpo": dict(lr=1e-4, kl_coef=0.04),
        "best_of_n": dict(group_size=8),
    },
    "gpt2": {
        # GPT-2 124M, IMDB, as in TRL's sentiment example (lr 1.41e-5, init_kl_coef 0.2, target
        # 6, batch 256, responses of up to 16 tokens); DPO: beta 0.1, lr 1e-6 (Rafailov et al. 2023)
        "base": dict(model="gpt2", reward="lvwerra/distilbert-imdb", dataset="imdb", dtype="float32", device="",
                     steps=200, prompts_per_step=64, group_size=4, max_new_tokens=16, prompt_tokens=8,
                     micro_batch_size=64, minibatch_size=0, checkpoint_every=25, eval_prompts=512, lr=1.41e-5),
        "ppo": dict(prompts_per_step=256, kl_coef=0.2, adaptive_kl=True, ppo_epochs=4, minibatch_size=64),
        "dpo": dict(prompts_per_step=64, kl_coef=0.1, lr=1e-6),
        "rloo": dict(kl_coef=0.0),
        "grpo": dict(kl_coef=0.04),
        "best_of_n": dict(steps=4, group_size=16),
    },
}
RLVR_OVERRIDES = {
    # the tiny model's one-digit sums (lesson 13); GPT-2 on the same problems
    "tiny": dict(reward="exact", dataset="tiny-arithmetic", max_new_tokens=24, group_size=8, prompts_per_step=4),
    "gpt2": dict(reward="exact", dataset="tiny-arithmetic", max_new_tokens=32, group_size=8, prompts_per_step=32),
}


def _field_types() -> dict:
    return typing.get_type_hints(ExperimentConfig)


def config_for(preset: str, method: str, task: str = "sentiment", **overrides) -> ExperimentConfig:
    """The config of `preset` for `method` (and task "sentiment" or "rlvr"), then `overrides`."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    methods = METHODS_SENTIMENT if task == "sentiment" else METHODS_RLVR
    if method not in methods:
        raise ValueError(f"method must be one of {methods} for {task}, got {method!r}")
    values = dict(PRESETS[preset]["base"])
    values.update(PRESETS[preset].get(method, {}))
    if task == "rlvr":
        values.update(RLVR_OVERRIDES[preset])
    values.update(preset=preset, method=method)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ExperimentConfig)}
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}")
    values.update(overrides)
    cfg = ExperimentConfig(**values)
    check_config(cfg, task)
    return cfg


def check_config(cfg: ExperimentConfig, task: str = "sentiment") -> None:
    """ValueError, naming the field, for a config that cannot run."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)

    for name in ("steps", "prompts_per_step", "max_new_tokens", "micro_batch_size", "ppo_epochs", "prompt_tokens"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and v >= 1, f"{name} must be an int >= 1, got {v!r}")
    need(isinstance(cfg.group_size, int) and cfg.group_size >= 2, f"group_size must be an int >= 2, got {cfg.group_size!r}")
    for name in ("minibatch_size", "checkpoint_every", "eval_prompts"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and v >= 0, f"{name} must be an int >= 0, got {v!r}")
    need(cfg.eval_prompts != 1, "eval_prompts must be 0 or >= 2 (a standard error needs two samples)")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.kl_coef >= 0, f"kl_coef must be >= 0, got {cfg.kl_coef}")
    need(cfg.temperature > 0, f"temperature must be > 0, got {cfg.temperature}")
    need(cfg.dtype in ("float32", "float64"), f"dtype must be 'float32' or 'float64', got {cfg.dtype!r}")
    need(cfg.random_init in ("", "124m"), f"random_init must be '' or '124m', got {cfg.random_init!r}")
    need(cfg.peak_tflops is None or cfg.peak_tflops > 0, f"peak_tflops must be > 0, got {cfg.peak_tflops}")
    need(cfg.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"), f"loss_type must be grpo, bnpo, dr_grpo or dapo, "
                                                               f"got {cfg.loss_type!r}")
    if cfg.method == "dpo":
        need(cfg.kl_coef > 0, "dpo needs kl_coef (DPO's beta) > 0")


def parse_config(argv=None, task: str = "sentiment", prog: str | None = None) -> ExperimentConfig:
    """The command line: --preset and --method choose the defaults, then one flag per field of
    ExperimentConfig (--max-new-tokens 32, --resume, --no-progress, ...) overrides them."""
    methods = METHODS_SENTIMENT if task == "sentiment" else METHODS_RLVR
    p = argparse.ArgumentParser(prog=prog, description=f"minirl {task} experiment (lesson 17)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--method", choices=methods, default=methods[0] if task == "rlvr" else "grpo")
    hints = _field_types()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in ("preset", "method"):
            continue
        flag = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if t is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            base = float if t in (float, typing.Optional[float]) else t
            p.add_argument(flag, dest=f.name, type=base, default=None)
    args = vars(p.parse_args(argv))
    preset, method = args.pop("preset"), args.pop("method")
    try:
        return config_for(preset, method, task, **{k: v for k, v in args.items() if v is not None})
    except ValueError as e:
        p.error(str(e))


# ------------------------------------------------------------------------------ FLOPs and MFU


def _shape(cfg) -> tuple[int, int, int, int]:
    """(vocab, positions, layers, width) of a GPT2Config-like object or dict."""
    get = (lambda k: cfg[k]) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    return int(get("vocab_size")), int(get("n_positions")), int(get("n_layer")), int(get("n_embd"))


def gpt2_param_count(cfg) -> int:
    """Parameters of a GPT2LMHeadModel with a tied LM head, from its shapes: V d (tokens) +
    n_pos d (positions) + L (12 d^2 + 13 d) (per block: qkv 3d^2 + 3d, attention out d^2 + d,
    MLP 8 d^2 + 5d, two LayerNorms 4d) + 2 d (final LayerNorm). GPT-2 small: 124,439,808."""
    V, n_pos, L, d = _shape(cfg)
    return V * d + n_pos * d + L * (12 * d * d + 13 * d) + 2 * d


def flop_params(cfg) -> int:
    """N in 6N: the parameters without the position embedding (a lookup, no multiply), with the
    token embedding counted once as the LM head's matmul. GPT-2 small: 123,653,376 (llm.c)."""
    V, n_pos, L, d = _shape(cfg)
    return gpt2_param_count(cfg) - n_pos * d


def flops_per_token(cfg, seq_len: float, kind: str = "train") -> float:
    """Model FLOPs per token for a context of `seq_len` tokens: "train" 6N + 12 L d T (forward
    and backward), "forward" 2N + 4 L d T (a reference or reward pass, or one cached decoding
    step whose context is T). Attention is counted over the full T (no causal halving), as llm.c
    and PaLM's appendix B do. GPT-2 small at T = 1024: 855,166,464 (0.855 GFLOP)."""
    if kind not in ("train", "forward"):
        raise ValueError(f"kind must be 'train' or 'forward', got {kind!r}")
    if not seq_len >= 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    _, _, L, d = _shape(cfg)
    n = flop_params(cfg)
    return 6 * n + 12 * L * d * seq_len if kind == "train" else 2 * n + 4 * L * d * seq_len


# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets; fp16 for V100
# and T4 (no bf16). Matched against torch.cuda.get_device_name, most specific first.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L4": 121.0,
    "V100": 125.0,
    "T4": 65.0,
}


def peak_tflops(device, override: float | None = None) -> float | None:
    """The peak TFLOP/s of one `device` for MFU: `override` if given; on CUDA the first entry of
    PEAK_TFLOPS whose name occurs in the device's name; else None (CPU, unknown GPU)."""
    if override is not None:
        if not override > 0:
            raise ValueError(f"override must be > 0, got {override}")
        return float(override)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def mfu(flops: float, seconds: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilization: flops / (seconds * peak * 1e12 * n_devices); None without a peak."""
    if peak is None:
        return None
    if not (seconds > 0 and peak > 0 and n_devices >= 1 and flops >= 0):
        raise ValueError(f"need seconds > 0, peak > 0, n_devices >= 1, flops >= 0; got {seconds}, {peak}, "
                         f"{n_devices}, {flops}")
    return flops / (seconds * peak * 1e12 * n_devices)


def format_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


# ------------------------------------------------------------------------------ memory arithmetic

# which models each method holds while it trains: (trained copies with gradients and Adam,
# frozen copies of the policy's size, needs the reward model during training)
METHOD_MODELS = {
    "ppo": dict(trained=2, frozen=1, reward_model=True),    # actor + critic; reference
    "grpo": dict(trained=1, frozen=1, reward_model=True),   # policy; reference (beta > 0 or KL logged)
    "rloo": dict(trained=1, frozen=1, reward_model=True),
    "dpo": dict(trained=1, frozen=1, reward_model=True),    # policy; reference; the reward labels the
                                                            # sampled pairs (pass reward_params=0 and
                                                            # kv_cache=0 for a fixed preference dataset)
    "best_of_n": dict(trained=0, frozen=1, reward_model=True),  # samples from the reference only
}


def kv_cache_bytes(cfg, batch: int, seq_len: int, bytes_per_value: int) -> int:
    """Keys and values of every layer for `batch` sequences of `seq_len` tokens: 2 L d B T values."""
    _, _, L, d = _shape(cfg)
    return 2 * L * d * batch * seq_len * bytes_per_value


def activation_bytes_estimate(cfg, batch: int, seq_len: int, bytes_per_value: int, per_layer_width: float = 30.0,
                              n_head_scores: int = 0) -> int:
    """Tensors saved for the backward pass of one teacher-forced log-prob pass over B x T tokens:

        per token   L * per_layer_width * d       inside the blocks (inputs of the matmuls and
                                                  LayerNorms, q, k, v, the MLP's 4d tensors and
                                                  the GELU's intermediates: 30 d for Hugging
                                                  Face's GPT-2, measured in lesson 17)
                  + 2 d                           the final LayerNorm's input and output
                  + (T - 1) / T * V               the log-softmax over the vocabulary (T - 1
                                                  predicted positions per row)
                  + L * n_head_scores * T         the attention probabilities, only for an
                                                  eager attention that stores them (pass n_head;
                                                  0 for SDPA / flash attention, which recompute)

    At GPT-2's vocabulary the log-softmax term is as large as about two blocks."""
    V, _, L, d = _shape(cfg)
    if batch < 1 or seq_len < 2:
        raise ValueError(f"need batch >= 1 and seq_len >= 2, got {batch}, {seq_len}")
    per_token = L * per_layer_width * d + 2 * d + (seq_len - 1) / seq_len * V + L * n_head_scores * seq_len
    return int(round(batch * seq_len * per_token * bytes_per_value))


def memory_breakdown(method: str, n_params: int, *, critic_params: int | None = None, reward_params: int = 0,
                     activations: int = 0, kv_cache: int = 0, weight_bytes: int = 4, adam_bytes: int = 8,
                     grad_bytes: int = 4) -> dict:
    """Bytes each part of `method`'s training state takes: weights of every copy, gradients and
    Adam's two moments of the trained copies (fp32 master weights, as mixed precision keeps them:
    4 + 4 + 8 = 16 bytes per trained parameter), the reward model, and the activations / KV cache
    passed in. Returns a dict of ints with "total"."""
    if method not in METHOD_MODELS:
        raise ValueError(f"method must be one of {sorted(METHOD_MODELS)}, got {method!r}")
    m = METHOD_MODELS[method]
    critic_params = n_params if critic_params is None else critic_params
    trained = [n_params, critic_params][: m["trained"]]
    out = {
        "policy weights": n_params * weight_bytes,
        "gradients": sum(trained) * grad_bytes,
        "Adam moments": sum(trained) * adam_bytes,
        "critic weights": critic_params * weight_bytes if m["trained"] == 2 else 0,
        "reference weights": n_params * weight_bytes if m["frozen"] and m["trained"] else 0,
        "reward model": reward_params * weight_bytes if m["reward_model"] else 0,
        "activations": activations if m["trained"] else 0,
        "KV cache": kv_cache,
    }
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------ timers, memory


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """`with t("generate"): ...` adds the block's wall seconds to t.seconds["generate"]; CUDA is
    synchronized before and after, so queued kernels are charged to the phase that launched them."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str):
        timer = self

        class _Block:
            def __enter__(self):
                synchronize(timer.device)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                synchronize(timer.device)
                timer.seconds[phase] = timer.seconds.get(phase, 0.0) + time.perf_counter() - self.t0
                return False

        return _Block()


def peak_memory_mib(device) -> float:
    """Peak memory of this process in MiB: torch.cuda.max_memory_allocated on CUDA, else the peak
    resident set size (Linux reports kB, macOS bytes), which only ever grows."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10


# ------------------------------------------------------------------------------ processes


class Dist:
    """One process's view of the run. Started by `accelerate launch --num_processes N` (WORLD_SIZE
    > 1 in the environment) it holds an `accelerate.Accelerator` (DDP over the processes'
    devices, or CPU with gloo); otherwise it is a single process and accelerate is not imported."""

    def __init__(self, device: str = ""):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = None
        if self.world_size > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=device == "cpu")
            self.rank, self.device = self.accelerator.process_index, self.accelerator.device
        else:
            self.rank = 0
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def prepare(self, *objs):
        """Wrap models (DDP) and optimizers for several processes; unchanged for one."""
        if self.accelerator is None:
            return objs if len(objs) > 1 else objs[0]
        return self.accelerator.prepare(*objs)

    def unwrap(self, model):
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def all_sum(self, x: float) -> float:
        if self.accelerator is None:
            return float(x)
        t = torch.tensor([float(x)], device=self.device, dtype=torch.float64 if self.device.type == "cpu"
                         else torch.float32)
        return float(self.accelerator.reduce(t, reduction="sum"))

    def gather_rows(self, row: dict) -> list[dict]:
        if self.accelerator is None:
            return [row]
        from accelerate.utils import gather_object

        return gather_object([row])

    def shard(self, items: list) -> list:
        """This process's share of a global list (every process drew the same list)."""
        return items[self.rank::self.world_size]

    def barrier(self):
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


LOG_KEYS = ("step", "method", "reward", "kl", "samples", "generated_tokens", "update_tokens", "update_flops",
            "time_generate", "time_score", "time_reference", "time_update", "time_step", "tokens_per_s",
            "update_tokens_per_s", "mfu", "peak_memory_mib", "world_size")
"""The keys every row of log.jsonl has (lesson 17 reads them); None where a method has no such
quantity (the KL of DPO's training rows, the MFU without a peak)."""

SUM_KEYS = ("samples", "generated_tokens", "update_tokens", "update_flops", "pairs")
MAX_PREFIXES = ("time_", "peak_memory")
KEEP_KEYS = ("step", "method", "preset", "world_size", "optimizer_steps", "beta", "lr", "n")


def combine_rows(rows: list[dict]) -> dict:
    """The logged row of a step from each process's row: counts (SUM_KEYS) are summed, wall times
    and peak memory take the maximum (the slowest process sets the pace), bookkeeping keys
    (KEEP_KEYS) are taken from the first row, every other number is averaged (each process holds
    an equal share of the batch, so the mean of the means is the batch mean); None and NaN stay
    None / NaN if any process has them. One row is returned unchanged."""
    if not rows:
        raise ValueError("combine_rows needs at least one row")
    if len(rows) == 1:
        return dict(rows[0])
    out = {}
    for key in rows[0]:
        vals = [r.get(key) for r in rows]
        if key in KEEP_KEYS or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = vals[0] if all(v is not None for v in vals) or key in KEEP_KEYS else None
        elif key in SUM_KEYS:
            out[key] = sum(vals)
        elif key.startswith(MAX_PREFIXES):
            out[key] = max(vals)
        else:
            out[key] = sum(vals) / len(vals)
    return out


def finish_row(row: dict, peak: float | None, world_size: int) -> dict:
    """Add the throughput columns computed from the (reduced) counts and times: tokens_per_s
    (sampled response tokens per second of the whole step), update_tokens_per_s, and mfu of the
    update phase (None without a peak or without an update)."""
    step_s = row.get("time_step", 0.0)
    row["tokens_per_s"] = row.get("generated_tokens", 0) / step_s if step_s > 0 else None
    upd = row.get("time_update", 0.0)
    row["update_tokens_per_s"] = row.get("update_tokens", 0) / upd if upd > 0 and row.get("update_tokens") else None
    flops = row.get("update_flops", 0)
    row["mfu"] = mfu(flops, upd, peak, world_size) if upd > 0 and flops else None
    return row


def nan_to_none(row: dict) -> dict:
    """JSON has no NaN: NaN and inf become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
