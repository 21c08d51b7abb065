"""GRPO step time: embeddings captured during rollout generation vs an extra forward pass for the reward.

One GRPO run (the umeflow step, TRL underneath) alternates the two ways of getting the reward's embeddings from one
step to the next, so background load and the policy's drift affect both alike:

* ``generation`` — umeflow's path: a forward hook keeps the last-layer state of each fed token while TRL generates;
* ``forward`` — the reference path (UME-R1's code; what vLLM rollouts need): one teacher-forced forward over
  prompt + completion after generation.

It prints the mean step time (TRL's ``step_time``) and the embedding time of each, the agreement of the two paths on
the same rollouts (min cosine), and, last, ``ratio=<capture step time / extra-forward step time>`` (below 1: faster).

    python benchmarks/grpo_step.py --model state/sft/model --data state/data/train [--steps 12 --generations 8]
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="state/sft/model")
    ap.add_argument("--data", default="state/data/train")
    ap.add_argument("--steps", type=int, default=12, help="GRPO steps (half per path, after one warm-up step each)")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=40)
    args = ap.parse_args(argv)

    import umeflow.train.grpo as grpo_mod
    from umeflow.config import GRPOConfig
    from umeflow.steps.grpo import run

    modes: list[str] = []
    embed_seconds = {"generation": [], "forward": []}
    agreement: list[float] = []

    class Alternating(grpo_mod.UmeGRPOTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            self.embedding_source = "generation" if len(modes) % 2 == 0 else "forward"
            modes.append(self.embedding_source)
            out = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                has_tool_images)
            # capture: picking rows out of the recorded steps; forward: the extra teacher-forced pass
            embed_seconds[self.embedding_source].append(self.rollouts.seconds)
            if len(modes) == 1:  # on the warm-up step (not timed): both paths must give the same states
                module = self.accelerator.unwrap_model(self.model)
                ref, _ = grpo_mod.teacher_forced_states(
                    module, prompt_ids, out[0], multimodal_fields, self.gen_emb_id,
                    self._tokenizer.pad_token_id, self._image_pad_token_id)
                cos = (self.rollouts.states * torch.nn.functional.normalize(ref.float(), dim=-1)).sum(-1)
                agreement.append(float(cos.min()))
            return out

    grpo_mod.UmeGRPOTrainer = Alternating
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(model=args.model, data=args.data, out=tmp, num_generations=args.generations,
                         pairs_per_step=args.pairs, per_device_batch_size=2 * args.pairs * args.generations // 4,
                         max_completion_length=args.max_completion_length, learning_rate=1e-5,
                         max_steps=args.steps + 2, save_steps=10_000, logging_steps=1, zero_std_patience=0,
                         max_pairs=(args.steps + 2) * args.pairs, resume=False)
        run(cfg)
        history = [h for h in json.loads((Path(tmp) / "log_history.json").read_text()) if "step_time" in h]
    times = {"generation": [], "forward": []}
    for i, h in enumerate(history):
        if i >= 2:  # first step of each path is warm-up
            times[modes[i]].append(h["step_time"])
    for mode in ("generation", "forward"):
        st, em = times[mode], embed_seconds[mode][1:]
        print(f"{mode:>10}: step {statistics.mean(st):.3f}s (n={len(st)}), embeddings {statistics.mean(em) * 1e3:.1f} ms"
              f" per step")
    print(f"capture vs forward states on the same rollouts: min cosine {min(agreement):.6f}")
    rollouts = 2 * args.pairs * args.generations
    print(f"rollouts per step: {rollouts}; device: {'cuda' if torch.cuda.is_available() else 'cpu'}")
    ratio = statistics.mean(times["generation"]) / statistics.mean(times["forward"])
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
