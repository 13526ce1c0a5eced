"""Training algorithms built on the shared pieces of minirl, one module each, all in one shape: a
flat dataclass config, a state, a step, and a loop with a JSONL log and checkpoints that resume bit
for bit. Each lesson that derives a loop inline checks it against its module here.

    sft        pretraining and supervised fine-tuning: next-token loss on the masked tokens, AdamW,
               warmup then linear decay, micro-batch accumulation (lesson 03)
    reinforce  REINFORCE on sequences: batch-mean baseline, per-token k1 penalty (lesson 04)
    dpo        the DPO family with the loss as a parameter (DPO, IPO, KTO with or without z_ref,
               ORPO, SimPO, CPO, RRHF, SFT on chosen), and the rounds of online DPO and SPIN
               (lessons 10-12)
    grpo       GRPO and its critic-free family (REINFORCE with a baseline, RLOO, Dr. GRPO, DAPO's
               token-level loss and clip-higher, GSPO's sequence ratio) as one loop: G samples per
               prompt, a verifiable reward, group-relative advantages, `minirl.losses.grpo_loss`
               (lesson 13)

PPO-RLHF lives in `minirl.rlhf` (lesson 08), reward models in `minirl.reward_model` (lesson 05).
Import the module: `from minirl.algos import grpo`, then `grpo.GRPOConfig`, `grpo.train_grpo`.
"""
