"""Sentiment control: make a language model continue text positively, by PPO, DPO, RLOO, GRPO or
best-of-n, and place each on one reward-KL frontier (lesson 17).

    python -m minirl.experiments.gpt2_sentiment --preset tiny --method grpo          # CPU, seconds
    python -m minirl.experiments.gpt2_sentiment --preset gpt2 --method ppo           # one GPU
    accelerate launch --num_processes 8 -m minirl.experiments.gpt2_sentiment --preset gpt2 --method ppo
    python -m minirl.experiments.gpt2_sentiment --preset gpt2 --method ppo --resume  # continue a run

Presets
    tiny   policy data/tiny-sft, prompts "write a review of the <dish>:" from the tiny world, reward
           the world's gold sentiment of the response (minirl.reward_model.gold_response_sentiment)
    gpt2   policy GPT-2 124M ("gpt2"), prompts the first --prompt-tokens tokens of IMDB reviews
           (datasets.load_dataset("imdb"); held-out prompts from its test split), reward the
           positive-class logit of the DistilBERT IMDB classifier "lvwerra/distilbert-imdb" on
           prompt + response, as in TRL's GPT-2 sentiment example

Offline: --model, --reward and --dataset also take local folders (save_pretrained / a .jsonl
with a "text" field / a datasets.save_to_disk folder). With the hub unreachable and the models
not cached, the gpt2 preset stops within seconds and says which flags to pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..models import HubUnavailableError, load_policy
from ..paths import REPO_ROOT
from ..reward_model import gold_response_sentiment
from ..rollout import text_scorer
from . import common, methods

TASK = "sentiment"
OFFLINE_HELP = (
    "The {preset} preset needs {what}, which could not be loaded ({why}). Pass local copies instead:\n"
    "  --model /path/to/gpt2 (a save_pretrained folder, e.g. from `huggingface-cli download gpt2 "
    "--local-dir /path/to/gpt2`)\n"
    "  --reward /path/to/distilbert-imdb (a sequence-classification folder)\n"
    "  --dataset /path/to/imdb.jsonl (one JSON object with a \"text\" field per line) or a "
    "datasets.save_to_disk folder\n"
    "or run once where the hub is reachable to fill the cache, or use --preset tiny (offline)."
)


def random_124m(tokenizer, seed: int):
    """A randomly initialised GPT-2 124M body (12 layers, width 768, 12 heads, 1024 positions,
    dropout off) with the tokenizer's vocabulary: the 124M shapes without downloading anything."""
    from transformers import GPT2LMHeadModel

    from ..models import _set_generation_ids, tiny_gpt2_config

    cfg = tiny_gpt2_config(len(tokenizer), n_layer=12, n_embd=768, n_head=12, n_positions=1024,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    _set_generation_ids(model, tokenizer)
    return model.eval()


def load_policy_for(cfg, dist) -> tuple:
    model, tok = load_policy(cfg.model, device="cpu", pad_as_eos=True)
    if cfg.random_init == "124m":
        model = random_124m(tok, cfg.seed)
    return model, tok


def _texts(dataset: str, split: str, n: int) -> list[str]:
    """Review texts: "imdb" (hub), a .jsonl file with "text", or a datasets.save_to_disk folder."""
    path = Path(dataset).expanduser()
    if path.suffix == ".jsonl" and path.is_file():
        from ..world import read_jsonl

        rows = read_jsonl(path)
        return [r["text"] for r in rows][:n] if split == "train" else [r["text"] for r in rows][-n:]
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return list(ds["text"][:n])
    import datasets

    return list(datasets.load_dataset(dataset, split=split)["text"][:n])


def imdb_prompts(tokenizer, texts: list[str], prompt_tokens: int) -> list[str]:
    """The first `prompt_tokens` tokens of each review (HTML line breaks removed), decoded."""
    out = []
    for text in texts:
        ids = tokenizer(text.replace("<br />", " "), add_special_tokens=False)["input_ids"][:prompt_tokens]
        if ids:
            out.append(tokenizer.decode(ids))
    return out


def classifier_scorer(model_id: str, device):
    """The positive-class logit of a sequence classifier on prompt + response, as score_fn."""
    from ..rewards import load_hub_sentiment_classifier

    fn = load_hub_sentiment_classifier(model_id, device=device)

    def score(s):
        return fn([p + r for p, r in zip(s.prompts, s.responses)])

    return score


def load_task(cfg, dist) -> methods.Task:
    """The sentiment task of cfg.preset (see the module docstring)."""
    if cfg.dataset == "tiny-world":
        from ..world import review_instruction_prompts

        policy, tok = load_policy_for(cfg, dist)
        train = [p["prompt"] for p in review_instruction_prompts(512, seed=1)]
        held = [p["prompt"] for p in review_instruction_prompts(max(cfg.eval_prompts, 2), seed=2)]
    else:
        policy, tok = load_policy_for(cfg, dist)
        texts = _texts(cfg.dataset, "train", 25000)
        train = imdb_prompts(tok, texts, cfg.prompt_tokens)
        held = imdb_prompts(tok, _texts(cfg.dataset, "test", max(cfg.eval_prompts, 2)), cfg.prompt_tokens)
    if cfg.reward == "gold":
        score = text_scorer(gold_response_sentiment)
    else:
        score = classifier_scorer(cfg.reward, dist.device)
    return methods.Task(TASK, train, held, score, tok, policy)


def main(argv=None, task: str = TASK, loader=None) -> dict:
    """Parse the flags, run, print where the log went and the final evaluation."""
    cfg = common.parse_config(argv, "sentiment" if task == TASK else task,
                              prog=f"python -m minirl.experiments.gpt2_{task}")
    loader = loader or load_task
    try:
        result = methods.run(cfg, loader, task)
    except HubUnavailableError as e:
        raise SystemExit(OFFLINE_HELP.format(preset=cfg.preset, what="models from the Hugging Face hub",
                                             why=str(e).split(":")[0]))
    except (ConnectionError, FileNotFoundError) as e:
        if cfg.preset == "tiny":
            raise
        raise SystemExit(OFFLINE_HELP.format(preset=cfg.preset, what=f"the dataset {cfg.dataset!r}",
                                             why=type(e).__name__))
    if result["state"].dist.main:
        rows, ev = result["rows"], result["eval"]
        try:
            where = Path(result["out_dir"]).resolve().relative_to(REPO_ROOT)
        except ValueError:
            where = result["out_dir"]
        last = rows[-1] if rows else {}
        print(f"{len(rows)} steps logged to {where}/log.jsonl")
        print(f"last step: reward "
              f"{_fmt(last.get('reward'))}, {_fmt(last.get('tokens_per_s'), '.0f')} tokens/s, "
              f"update MFU {common.format_mfu(last.get('mfu'))}")
        if ev:
            print(f"held-out ({ev['n']} prompts): reward {ev['reward']:.3f} +- {ev['reward_sem']:.3f}, "
                  f"KL {ev['kl']:.3f} +- {ev['kl_sem']:.3f} nats")
    return result


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


if __name__ == "__main__":
    main(sys.argv[1:])
