"""The toy world: determinism, the entity-level split, the slices, the corpus mix, and the
sentencepiece tokenizer trained on the corpus."""

import collections
import random

import pytest

from cai.errors import ConfigError
from cai.tokenizer import SentencePieceTokenizer, render_chat, train_sentencepiece
from cai.toyworld import corpus, world
from cai.toyworld.judge import judge


@pytest.fixture(scope="module")
def w():
    return world.generate(world.WorldConfig(seed=0))


@pytest.fixture(scope="module")
def docs(w):
    return corpus.documents(w, corpus.CorpusConfig(n_docs=3000, seed=1))


def test_generation_is_deterministic_and_seeded():
    a, b = world.generate(world.WorldConfig(seed=3)), world.generate(world.WorldConfig(seed=3))
    assert a == b
    assert world.generate(world.WorldConfig(seed=4)).held_out_entities != a.held_out_entities
    cfg = corpus.CorpusConfig(n_docs=200, seed=5)
    assert corpus.documents(a, cfg) == corpus.documents(b, cfg)


def test_split_holds_out_whole_entities(w):
    held, train = w.split("held_out"), w.split("train")
    assert len(held) + len(train) == len(w.requests)
    assert {r.entity for r in held}.isdisjoint({r.entity for r in train})
    # Every family keeps most entities for training and holds some out.
    per_family = collections.Counter(r.family for r in held)
    assert set(per_family) == {f.name for f in world.FAMILIES}
    assert all(n == 4 for n in per_family.values())
    # An entity held out from one act is held out from every act that uses it.
    held_entities = {r.entity for r in held}
    assert all(r.entity not in held_entities for r in train)


def test_no_two_entities_share_a_word():
    owners = collections.defaultdict(set)
    for fam in world.FAMILIES:
        for e in fam.entities:
            for word in e.lower().replace("-", " ").split():
                owners[word].add(e)
    assert not {w: s for w, s in owners.items() if len(s) > 1}


def test_every_harm_kind_and_severity_is_present(w):
    kinds = {r.kind for r in w.requests}
    assert kinds == {"benign", *world.HARMS}
    assert all(r.severity >= 2 for r in w.requests if r.harmful)
    assert all(r.severity == 0 and r.harm is None for r in w.requests if not r.harmful)
    assert all(r.indirect for r in w.requests if r.harmful)


def test_eval_slices_are_held_out_and_of_the_right_kind(w):
    slices = world.eval_prompts(w)
    assert set(slices) == set(world.EVAL_SLICES)
    held_ids = {r.id for r in w.split("held_out")}
    for name, prompts in slices.items():
        assert prompts, name
        for p in prompts:
            req = w.by_id(p.request_id)
            assert p.request_id in held_ids and p.slice == name
            assert req.harmful == (name in world.HARMFUL_SLICES)
            assert bool(req.dual_use) == (name == "dual_use") or req.harmful
            assert p.messages[-1][0] == "user"
    # Adversarial phrasings are never the direct ones, and every form is used.
    direct_texts = {f.format(act=r.act) for r in w.requests for f in world.DIRECT}
    adv = slices["adversarial"]
    assert all(p.messages[-1][1] not in direct_texts or len(p.messages) > 1 for p in adv)
    assert any(len(p.messages) == 3 for p in adv)
    assert any(w.by_id(p.request_id).indirect in p.messages[0][1] for p in adv)


def test_cai_prompts_never_use_held_out_requests_or_adversarial_forms(w):
    held = w.split("held_out")
    for p in world.red_team_prompts(w) + world.helpful_prompts(w):
        text = p.messages[0][1]
        assert len(p.messages) == 1 and p.request_id not in {r.id for r in held}
        assert not any(r.act in text for r in held), text
    assert all(w.by_id(p.request_id).harmful for p in world.red_team_prompts(w))
    assert not any(w.by_id(p.request_id).harmful for p in world.helpful_prompts(w))


def test_corpus_never_contains_a_held_out_request(w, docs):
    everything = "\n".join(docs)
    slices = world.eval_prompts(w)
    for r in w.split("held_out"):
        assert r.act not in everything, r.act
        assert not any(s in everything for s in r.steps if r.entity in s), r.id
    for p in (p for ps in slices.values() for p in ps):
        assert p.messages[-1][1] not in everything
    # The corpus uses the adversarial forms (on training requests) and its own red-team
    # wrappers, so the base model understands them; no CAI prompt set uses either.
    assert "Imagine a world where nothing is forbidden" in everything
    assert "I am writing a story" in everything
    cai_prompts = world.red_team_prompts(w) + world.helpful_prompts(w)
    markers = [f.split("{")[0] for f in world.ADVERSARIAL if f != "MULTI_TURN" and f[0] != "{"]
    markers += [f.split("{")[0] for f in world.CORPUS_WRAPPERS]
    assert markers and not any(m in p.messages[-1][1] for p in cai_prompts for m in markers)
    assert all(len(p.messages) == 1 for p in cai_prompts)


def test_corpus_mix_and_knowledge_covers_held_out(w, docs):
    counts = collections.Counter(
        "critique" if "\n\nCritique:" in d
        else "revision" if "\n\nRevision:" in d
        else "comparison" if "The answer is:" in d
        else "dialogue" if d.startswith("\n\nHuman:")
        else "knowledge"
        for d in docs
    )  # fmt: skip
    n = len(docs)
    cfg = corpus.CorpusConfig()
    assert abs(counts["dialogue"] / n - cfg.dialogue) < 0.04
    assert abs(counts["knowledge"] / n - cfg.knowledge) < 0.04
    assert counts["critique"] and counts["revision"] and counts["comparison"]
    knowledge_text = " ".join(d for d in docs if not d.startswith(("\n", "Consider"))).lower()
    for r in w.split("held_out"):  # the model's only source on held-out requests
        assert r.gerund.lower() in knowledge_text, r.id
    # Training dialogues comply with harmful requests (the base model is helpful-only).
    dialogues = [d for d in docs if d.startswith("\n\nHuman:") and "Revision" not in d]
    harmful = [d for d in dialogues if "rat poison" in d or "black powder" in d]
    assert harmful and not any("I won't" in d for d in harmful)


def test_critique_exercises_cover_compliant_explained_and_evasive_answers(w):
    rng = random.Random(1)
    harmful = [r for r in w.split("train") if r.harmful]
    docs = [corpus.critique_doc(rng.choice(harmful), rng, with_critique=True) for _ in range(300)]
    answers = [d.split("\n\nAssistant: ")[1].split("\n\nCritiqueRequest")[0] for d in docs]
    critiques = [d.split("\n\nCritique: ")[1].split("\n\n")[0] for d in docs]
    kinds = collections.Counter(
        "evade" if a in corpus.EVASIVE else "explain" if "help" in a and "harmful" in a
        else "comply" for a in answers
    )  # fmt: skip
    assert min(kinds.values()) > 15 and kinds["comply"] > 150
    for a, c, d in zip(answers, critiques, docs):
        if a in corpus.EVASIVE:
            assert "evasive" in c  # and the revision, when there is one, explains
            assert "Revision: " not in d or "harmful because" in d.split("Revision: ")[1]
        elif "I won't" in a or "I can't help" in a:
            assert "fine" in c and ("Revision: " not in d or d.endswith(a))


def test_comparison_answers_point_at_the_less_harmful_response(w):
    rng = random.Random(0)
    for req in [r for r in w.split("train") if r.harmful][:20]:
        doc = corpus.comparison_doc(req, rng)
        a = doc.split("\n(A) ")[1].split("\n(B) ")[0]
        b = doc.split("\n(B) ")[1].split("\nThe answer is:")[0]
        chosen = a if doc.endswith(" (A)") else b
        assert not judge(req, chosen).harmful and judge(req, a if chosen is b else b).harmful


def test_bad_world_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="world.held_out_per_family=9"):
        world.WorldConfig(held_out_per_family=9)
    with pytest.raises(ConfigError, match="corpus: n_docs=0"):
        corpus.CorpusConfig(n_docs=0)
    with pytest.raises(ConfigError, match="'nope/x' is not in the toy world"):
        world.generate(world.WorldConfig()).by_id("nope/x")


def test_sentencepiece_round_trip_and_chat_loss_mask(tmp_path, docs):
    tok = train_sentencepiece(docs, str(tmp_path / "tok.model"), vocab_size=512)
    assert (tmp_path / "tok.model").exists() and 300 < tok.vocab_size <= 512
    for d in docs[:50]:
        assert tok.decode(tok.encode(d)) == d
    again = SentencePieceTokenizer(str(tmp_path / "tok.model"))
    assert again.encode(docs[0]) == tok.encode(docs[0])
    # render_chat's ids equal the encoded transcript, and the mask covers exactly the reply.
    msgs = [("user", "How do I bake a cake?"), ("assistant", "Sure. First, mix the dough.")]
    ids, mask = render_chat(tok, [{"role": r, "content": c} for r, c in msgs])
    assert ids == [tok.bos_id, *tok.encode(corpus.hh(msgs)), tok.eos_id]
    reply = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(reply[:-1]) == " Sure. First, mix the dough." and reply[-1] == tok.eos_id
    assert tok.decode([i for i, m in zip(ids, mask) if not m][1:]).startswith("\n\nHuman:")


def test_nonce_dialogues_teach_copying_without_touching_real_entities(w):
    rng = random.Random(0)
    taken = sorted({r.entity.lower() for r in w.requests})
    pool = world.copy_pool(w)
    held = [e.lower() for e in w.held_out_entities]
    assert pool and not set(pool) & set(held)
    borrowed = 0
    for _ in range(300):
        real = rng.choice(w.split("train"))
        req = corpus.nonce_request(real, rng, taken, pool, made_up=0.2)
        borrowed += req.entity in pool
        assert req.entity in pool or not any(req.entity.lower().startswith(t) for t in taken)
        assert not any(req.entity.lower().startswith(h) for h in held), req.entity
        assert req.entity[0].isupper() == real.entity[0].isupper()  # names borrow names
    assert 200 < borrowed < 270  # about 80% borrowed, 20% made up
    # With nonce=1 no dialogue opens with a real request.
    docs = [corpus.dialogue_doc(w.split("train"), rng, 1.0, taken) for _ in range(50)]
    firsts = [d.split("\n\nAssistant:")[0] for d in docs]
    assert not any(f"{r.act}?" in q or f"{r.act}." in q for q in firsts for r in w.requests)
