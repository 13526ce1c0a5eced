"""Entry points that run the course's algorithms at GPT-2 scale, on one or several GPUs (lesson 17).

    python -m minirl.experiments.gpt2_sentiment --preset tiny|gpt2 --method ppo|dpo|rloo|grpo|best_of_n
    python -m minirl.experiments.gpt2_rlvr      --preset tiny|gpt2 --method grpo|rloo
    accelerate launch --num_processes N -m minirl.experiments.gpt2_sentiment --preset gpt2 ...

    common     the flat config and its presets (tiny: the shipped tiny model on CPU in seconds;
               gpt2: GPT-2 124M, IMDB prompts, a DistilBERT IMDB classifier), the command line,
               FLOPs per token and MFU (a small table of peak throughputs, --peak-tflops), the
               memory arithmetic of each method, per-phase timers, peak memory, the distributed
               context and the reduction of metrics over processes
    methods    one step of each method (PPO, DPO, RLOO, GRPO, best-of-n) over the shared layer
               (minirl.rollout, rlhf, dpo, bon, algos.grpo, training), and the run loop:
               checkpoints every N steps, --resume, the JSONL log, a final held-out evaluation
    gpt2_sentiment, gpt2_rlvr   the two tasks (sentiment control; arithmetic with a verifier)
    tiny_logs  `python -m minirl.experiments.tiny_logs`: the tiny-preset logs shipped in
               data/results/17_*.jsonl (lesson 17 plots them and reproduces one)

Every script is thin: the losses, advantages, samplers and KL estimates are the package's own.
"""
