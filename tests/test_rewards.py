"""Reward functions against hand-computed values (method.md §1.6, §2.5, §4.7)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from PIL import Image

from umeflow.train.grpo import bbox_crops, evidence_item, states_from_steps
from umeflow.train.rewards import (embed_rl_outcome_scores, judge_candidates, parse_judge_choice, rank_gap_scores,
                                   tcot_format_reward, ume_embedding_reward, ume_format_reward)


def unit(*xs: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in xs))
    return [x / n for x in xs]


def with_sim(s: float) -> list[float]:
    """A unit vector whose cosine with e1 is s."""
    return [s, math.sqrt(max(0.0, 1 - s * s)), 0.0]


T = torch.tensor


def test_two_pairs_both_sides_by_hand():
    # G = 2 rollouts per side per pair. Query rollouts of pair 0 point at e1, of pair 1 at e2.
    q = T([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    t = T([[1.0, 0], [0.6, 0.8], [0, 1.0], [0.8, 0.6]])
    pairs = T([0, 0, 1, 1])
    qs, ts = ume_embedding_reward(q, t, pairs, pairs)
    # q0 · t = [1, .6, 0, .8]: top-2 = {1 (pos), .8 (neg)} → rank 1/2; gap = mean(1,.6) − mean(0,.8) = .4
    assert qs.rank.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert qs.gap.tolist() == pytest.approx([0.4, 0.4, 0.4, 0.4])
    assert qs.reward.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2])
    # target side (Sᵀ): t0 · q = [1,1,0,0] → rank 1, gap 1; t1 · q = [.6,.6,.8,.8] → rank 0, gap −.2
    assert ts.rank.tolist() == pytest.approx([1, 0, 1, 0])
    assert ts.gap.tolist() == pytest.approx([1, -0.2, 1, -0.2])
    assert ts.reward.tolist() == pytest.approx([1, 0, 1, 0])


def test_negative_gap_gives_a_negative_reward():
    anchor = T([[1.0, 0, 0]])
    cands = T([with_sim(1.0), with_sim(-1.0), with_sim(0.5), with_sim(0.5), with_sim(0.5), with_sim(0.5)])
    s = rank_gap_scores(anchor, cands, T([0]), T([0, 0, 1, 1, 2, 2]))
    # positives {1, −1}: mean 0; negatives mean .5; top-2 = {1 (pos), .5 (neg)} → rank .5 → reward −.25
    assert s.rank.item() == pytest.approx(0.5)
    assert s.gap.item() == pytest.approx(-0.5)
    assert s.reward.item() == pytest.approx(-0.25)


def test_identical_completions_earn_no_ranking_credit():
    # a collapsed group: every rollout has the same embedding → all similarities tie; ties rank negatives first
    e = T([[1.0, 0]] * 4)
    s = rank_gap_scores(e, e, T([0, 0, 1, 1]), T([0, 0, 1, 1]))
    assert s.rank.tolist() == [0, 0, 0, 0]
    assert s.gap.tolist() == pytest.approx([0, 0, 0, 0])
    assert s.reward.tolist() == pytest.approx([0, 0, 0, 0])


def test_partial_ties_are_broken_pessimistically():
    anchor = T([[1.0, 0]])
    cands = T([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]])  # pos sims [1, 0], neg sims [1, 0]
    s = rank_gap_scores(anchor, cands, T([0]), T([0, 0, 1, 1]))
    assert s.rank.item() == pytest.approx(0.5)  # top-2 = {neg 1, pos 1}, not {pos 1, neg 1} by luck of order


def test_reward_needs_two_pairs_and_both_sides():
    e = T([[1.0, 0], [0, 1.0]])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        rank_gap_scores(e, e, T([0, 0]), T([0, 0]))
    with pytest.raises(ValueError, match="one side only"):
        rank_gap_scores(e, e, T([0, 2]), T([0, 1]))


def test_ume_format_reward():
    texts = ["<think>a grey boot.</think><answer>ankle boot<gen_emb>",
             "<think>x</think>\n<answer> shirt \n<gen_emb><|im_end|>",
             "<think>no answer</think> boot<gen_emb>",  # no <answer>
             "<think>a</think><answer>b",  # completion without <gen_emb>
             "prefix <think>a</think><answer>b<gen_emb>"]  # a preamble still scores: UME-R1 uses re.search
    assert ume_format_reward(texts) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_missing_gen_emb_falls_back_to_the_last_fed_state_not_the_prompt():
    gen = 9
    steps = [torch.full((2, 3), float(k)) for k in range(5)]  # step k's state == k for every row
    states, fallback = states_from_steps(steps, [[1, gen, 2], [1, 3, 2]], gen)
    assert states[0].tolist() == [2.0] * 3  # <gen_emb> at completion index 1 → step 2
    assert states[1].tolist() == [2.0] * 3  # no <gen_emb>, 3 tokens → the last fed token (index 1) → step 2
    assert fallback.tolist() == [False, True]
    # <gen_emb> as the very last token of the whole batch was never fed: flagged, last step used
    states, fallback = states_from_steps(steps[:3], [[1, gen], [1, 2]], gen)
    assert fallback.tolist() == [False, True]
    states, fallback = states_from_steps(steps[:2], [[1, gen], [1, 2]], gen)
    assert fallback.tolist() == [True, True]


def test_embed_rl_outcome_by_hand():
    anchor = T([with_sim(1.0)])
    cands = T([with_sim(0.9), with_sim(0.7), with_sim(0.2), with_sim(0.4)])
    s = embed_rl_outcome_scores(anchor, cands, T([0]), T([0, 0, 1, 1]), tau=0.5)
    w_hi = math.exp(0.8) / (math.exp(0.4) + math.exp(0.8))
    expected = 0.8 - (0.2 * (1 - w_hi) + 0.4 * w_hi)
    assert s.rank.item() == 1.0 and s.reward.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    plain = embed_rl_outcome_scores(anchor, cands, T([0]), T([0, 0, 1, 1]), weighted_negatives=False)
    assert plain.reward.item() == pytest.approx(0.5, rel=1e-5, abs=1e-7)
    # one positive falls out of the top-2: Acc_all = 0 (paper), fraction = 1/2 (released code)
    cands2 = T([with_sim(0.9), with_sim(0.1), with_sim(0.2), with_sim(0.4)])
    assert embed_rl_outcome_scores(anchor, cands2, T([0]), T([0, 0, 1, 1])).reward.item() == 0.0
    frac = embed_rl_outcome_scores(anchor, cands2, T([0]), T([0, 0, 1, 1]), acc_mode="fraction")
    w = torch.softmax(T([0.2, 0.4]) / 0.5, 0)
    assert frac.reward.item() == pytest.approx(0.5 * (0.5 - float((w * T([0.2, 0.4])).sum())), rel=1e-5, abs=1e-7)


def test_tcot_format_needs_all_parts_and_the_cue():
    good_img = '<thinking>A boot. {"bbox_2d": [10, 20, 900, 950]}</thinking><rethink>ok</rethink><answer>boot</answer>'
    good_txt = '<thinking>{"text_keywords": ["boot"]}</thinking><rethink>ok</rethink><answer>boot</answer>'
    no_cue = "<thinking>A boot.</thinking><rethink>ok</rethink><answer>boot</answer>"
    no_rethink = '<thinking>{"bbox_2d": [1, 2, 3, 4]}</thinking><answer>boot</answer>'
    kinds = ["image", "text", "image", "image"]
    assert tcot_format_reward([good_img, good_txt, no_cue, no_rethink], kinds) == [1.0, 1.0, 0.0, 0.0]
    assert tcot_format_reward([good_img, good_txt, no_cue, no_rethink], kinds, require_cue=False) == [1, 1, 1, 0]
    assert tcot_format_reward([good_txt], ["image"]) == [0.0]  # an image input must cite a box


def test_judge_helpers():
    assert parse_judge_choice("3", 5) == 2
    assert parse_judge_choice("Candidate 2 is best", 5) == 1
    assert parse_judge_choice("7", 5) is None and parse_judge_choice("none", 5) is None
    sims = T([0.9, 0.8, 0.1, 0.5, 0.7, 0.2])
    order, positives = judge_candidates(sims, 0, T([0, 0, 1, 1, 2, 2]), n_other=1,
                                        generator=torch.Generator().manual_seed(0))
    assert positives == {0, 1}
    assert sorted(order) == [0, 1, 4]  # both positives + the best rollout (.7) of the most similar other pair


def test_bbox_crops_on_the_0_1000_grid():
    im = Image.new("RGB", (100, 200), (0, 0, 0))
    crops = bbox_crops(im, {"bbox_2d": [[100, 100, 500, 500], [0, 0, 50, 50], ["a", 1, 2, 3]]})
    assert [c.size for c in crops] == [(40, 80)]  # the 5×10 px box is dropped, the malformed one skipped
    item = evidence_item("a bag", im, '<thinking>{"bbox_2d": [0, 0, 1000, 1000]}</thinking><rethink>r</rethink>'
                                      "<answer>bag</answer>")
    assert len(item.images) == 2 and item.text.startswith("a bag\n<thinking>")


def _judge_fixture(endpoint_url, tmp_path):
    from umeflow.annotate.openai_compat import OpenAIAnnotator
    from umeflow.train.grpo import EmbedRLRewards, RolloutStates

    judge = OpenAIAnnotator(endpoint_url, "judge", tmp_path / "cache", max_tokens=10, backoff_base=0.01)
    return EmbedRLRewards(embedder=None, store=RolloutStates(), judge=judge, judge_model="judge", judge_candidates=2)


def test_process_reward_asks_a_real_judge_over_http(tmp_path):
    from chat_endpoint import Endpoint

    # 3 pairs × 2 sides × G=2; a positive rollout's text names its pair ("pair-0 …"), so a judge that picks the
    # candidate naming the anchor's pair is always right, and one that answers out of range never is.
    pairs = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    side = ["query", "query", "target", "target"] * 3
    texts = [f"pair-{p} {s} rollout" for p, s in zip(pairs, side)]
    emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = torch.tensor(pairs)
    local = slice(0, 12)

    def right(text, parts):
        anchor = re.search(r"Reasoning: pair-(\d+)", text).group(1)
        numbered = re.findall(r"^(\d+)\. pair-(\d+)", text, flags=re.M)
        return next(n for n, p in numbered if p == anchor)

    with Endpoint(replies=right) as server:
        rewards = _judge_fixture(server.url, tmp_path)
        out = rewards._process(texts, ["x"] * 12, side, emb, rows, None, None, local)
        assert out == [1.0] * 12 and len(server.requests) == 12
        prompt = server.requests[0]["body"]["messages"][0]["content"][0]["text"]
        assert "select the most relevant candidate" in prompt and prompt.count("\n1. ") == 1
    with Endpoint(replies=lambda text, parts: "99") as server:
        out = _judge_fixture(server.url, tmp_path / "b")._process(texts, ["x"] * 12, side, emb, rows, None, None,
                                                                  local)
        assert out == [0.0] * 12
