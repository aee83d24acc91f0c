"""Closed-set fact recall (issue 15, first part): the KV cache of GPT.forward, cached candidate scoring against
naive full scoring, leak-free prompts, and the per-item numbers on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densitylab.model import GPT
from densitylab.probes.knowledge import (
    KNOWLEDGE_ATTRIBUTES,
    item_scores,
    knowledge_prompts,
    score_candidates,
    score_candidates_naive,
    with_name_templates,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32).eval()


def test_kv_cache_continues_a_prompt_exactly_as_the_full_forward(model):
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 97, (3, 20), generator=g)
    full = model(seq)
    logits, past = model(seq[:, :12], use_cache=True)
    assert len(past) == 2 and past[0][0].shape == (3, 2, 12, 16)
    cont, past2 = model(seq[:, 12:], past_key_values=past, use_cache=True)
    assert torch.allclose(torch.cat([logits, cont], 1), full, atol=1e-5)
    assert past2[1][1].shape == (3, 2, 20, 16)
    resid = model(seq[:, 12:], past_key_values=past, stop_at_layer=1)
    _, cache = model.run_with_cache(seq, ["blocks.0.hook_resid_post"])
    assert torch.allclose(resid, cache["blocks.0.hook_resid_post"][:, 12:], atol=1e-5)
    with pytest.raises(ValueError, match="exceeds model.net.block_size=32"):
        model(torch.cat([seq, seq[:, :1]], 1), past_key_values=past)  # 12 + 21 > 32
    assert torch.equal(model(seq), full)  # the training path is untouched


def test_cached_candidate_scoring_equals_naive_full_scoring(model):
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 97, (9,), generator=g).tolist()
    cands = [torch.randint(0, 97, (int(n),), generator=g).tolist() for n in (1, 3, 2, 5, 1, 4)]
    fast, slow = score_candidates(model, prompt, cands), score_candidates_naive(model, prompt, cands)
    assert fast.shape == (6,) and np.allclose(fast, slow, atol=1e-4), (fast, slow)
    assert (fast < 0).all()
    with pytest.raises(ValueError, match="at least one token"):
        score_candidates(model, prompt, [[1], []])


class OneCity(torch.nn.Module):
    """A 'model' whose next-token distribution always puts all mass on token 5 (the city token)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"block_size": 64})()

    def forward(self, idx, past_key_values=None, use_cache=False, **_):
        logits = torch.full((*idx.shape, 10), -1e4)
        logits[..., 5] = 0.0
        past = [(torch.zeros(idx.shape[0], 1, idx.shape[1], 1), torch.zeros(idx.shape[0], 1, idx.shape[1], 1))]
        return (logits, past) if use_cache else logits


def test_a_model_that_always_answers_one_city_is_right_for_that_citys_people_with_confidence_one():
    model = OneCity()
    cities = [[3], [4], [5], [6]]  # candidate token ids; the model always says token 5
    truths = [0, 1, 2, 2, 3, 1, 2]  # three of seven people were born in the city with token 5
    out = [item_scores(score_candidates(model, [1, 2], cities), t) for t in truths]
    acc = np.mean([o["correct"] for o in out])
    assert acc == pytest.approx(3 / 7)  # the frequency of that city among the people
    assert all(o["predicted"] == 2 and o["confidence"] == pytest.approx(1.0) for o in out)
    assert all(o["entropy"] == pytest.approx(0.0, abs=1e-6) for o in out)


def test_item_scores_on_a_known_distribution():
    logp = np.log([0.5, 0.3, 0.2])
    right = item_scores(logp, 0)
    assert right["correct"] and right["p_true"] == pytest.approx(0.5) and right["confidence"] == pytest.approx(0.5)
    assert right["margin"] == pytest.approx(math.log(0.5 / 0.3))
    wrong = item_scores(logp, 2)
    assert not wrong["correct"] and wrong["predicted"] == 0 and wrong["margin"] == pytest.approx(math.log(0.2 / 0.5))
    assert wrong["entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))
    with pytest.raises(ValueError, match="expected >= 2"):
        item_scores(np.zeros(1), 0)


def test_no_prompt_contains_any_attribute_value_of_its_subject():
    """Over every person of the default synthetic corpus's people (2,200): each prompt holds the name and
    template words only, never one of its subject's six attribute values nor any candidate of the attribute
    asked (the items of people whose name holds one are left out), and ends right before the value."""
    from densitylab.data.synthetic.generate import generate_synthetic  # noqa: F401  (the generator's tables)
    from densitylab.data.synthetic.people import sample_population

    people = sample_population(np.random.default_rng(0), 2000, 200, 1.0, 1000, 1).entities
    prompts = knowledge_prompts(people, people["entity_id"].tolist())
    # left out: the items whose prompt names a candidate of the attribute (a middle name that is a city)
    sydney = people["entity"].str.split().str[1].eq("Sydney").sum()
    assert sydney > 0 and len(prompts) == len(people) * len(KNOWLEDGE_ATTRIBUTES) - sydney
    values = people.set_index("entity_id")[["birth_date", "birth_city", "university", "major", "employer",
                                            "employer_city"]]  # fmt: skip
    names = people.set_index("entity_id")["entity"]
    for p in prompts:
        row, name = values.loc[p.entity_id], names.loc[p.entity_id]
        assert p.text.startswith(name)
        rest = p.text[len(name) :]
        assert not any(str(v) in rest for v in row), (p.text, list(row))
        # the whole prompt, name included, offers no candidate of its attribute (the middle name Sydney)
        words = f" {p.text} "
        assert not any(f" {c.strip()} " in words for c in p.candidates), p.text
        assert not p.text.endswith(" ") and "{" not in p.text
        assert (" " + p.answer) in p.candidates
    months = [p for p in prompts if p.attribute == "birth_date"]
    assert all(len(p.candidates) == 12 for p in months)
    # the with-name templates rotate across people
    assert len({p.template for p in prompts if p.attribute == "birth_city"}) == len(with_name_templates("birth_city"))
    with pytest.raises(ValueError, match="employer_city"):
        knowledge_prompts(people, [0], ["employer_city"])


def test_measure_knowledge_scores_every_item_with_a_real_tokenizer(model):
    """Byte-level BPE on a few biographies: every item gets one row, the truth is among the candidates, and
    an untrained model's accuracy is near chance (not a leak)."""
    import pandas as pd
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from densitylab.probes.knowledge import ITEM_COLUMNS, measure_knowledge

    people = pd.DataFrame(
        {"entity_id": [0, 1, 2], "entity": ["Ann Lee Park", "Bo Ray Chen", "Cy Max Diaz"],
         "gender": ["female", "male", "male"], "birth_date": ["May 2, 1990", "June 3, 1980", "May 9, 1970"],
         "birth_city": ["Paris", "Rome", "Oslo"], "university": ["MIT", "Yale", "MIT"],
         "major": ["Law", "Art", "Math"], "employer": ["Acme", "Initech", "Acme"]}
    )  # fmt: skip
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Ann Lee Park was born in Paris. Bo studied at Yale. May June Law Art Math"] * 5, trainer)
    small = GPT(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=1, n_embd=16).eval()
    prompts = knowledge_prompts(people, [0, 1, 2])
    items = measure_knowledge(small, tok, prompts)
    assert list(items.columns) == ITEM_COLUMNS and len(items) == 15
    assert set(items["attribute"]) == set(KNOWLEDGE_ATTRIBUTES)
    assert (items["p_true"].between(0, 1)).all() and (items["candidate_tokens"] > 0).all()
    for it in items.itertuples():
        assert it.predicted in {c.strip() for p in prompts if p.attribute == it.attribute for c in p.candidates}
    for p, it in zip(prompts, items.itertuples()):  # the batched path equals one prompt at a time
        ids = tok.encode(p.text, add_special_tokens=False).ids
        cands = [tok.encode(c, add_special_tokens=False).ids for c in p.candidates]
        alone = item_scores(score_candidates(small, ids, cands), p.candidates.index(" " + p.answer))
        assert it.p_true == pytest.approx(alone["p_true"], abs=1e-5) and it.correct == alone["correct"]


def test_batched_prompts_score_as_each_prompt_alone(model):
    from densitylab.probes.knowledge import score_candidates_batch

    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (7,), generator=g).tolist() for _ in range(5)]
    cands = [torch.randint(0, 97, (int(n),), generator=g).tolist() for n in (2, 1, 4)]
    batch = score_candidates_batch(model, prompts, cands, max_rows=6)  # 2 prompts per candidate pass
    alone = np.stack([score_candidates(model, p, cands) for p in prompts])
    assert batch.shape == (5, 3) and np.allclose(batch, alone, atol=1e-4)
    with pytest.raises(ValueError, match="expected one length"):
        score_candidates_batch(model, [[1, 2], [3]], cands)
