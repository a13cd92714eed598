"""The toy world: determinism, the entity-level train/dev/test split, the slices, clean prompt
sets, the corpus mix, and the sentencepiece tokenizer trained on the corpus."""

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


def test_three_splits_hold_out_whole_entities(w):
    parts = {name: w.split(name) for name in world.SPLITS}
    assert sum(map(len, parts.values())) == len(w.requests)
    entities = {name: {r.entity for r in reqs} for name, reqs in parts.items()}
    assert entities["train"].isdisjoint(entities["dev"] | entities["test"])
    assert entities["dev"].isdisjoint(entities["test"])
    # Every family keeps half its entities for training and holds 8 out in each of dev, test.
    assert all(len(f.entities) == world.ENTITIES_PER_FAMILY for f in world.FAMILIES)
    for name in ("dev", "test"):
        per_family = collections.Counter(r.family for r in parts[name])
        assert set(per_family) == {f.name for f in world.FAMILIES}
        assert set(per_family.values()) == {8}
    # Disjoint at the string level: no word of a held-out entity is a word of a training one.
    words = {n: {x for e in es for x in e.lower().split()} for n, es in entities.items()}
    assert words["train"].isdisjoint(words["dev"] | words["test"])
    assert words["dev"].isdisjoint(words["test"])
    assert w.held_out_entities == entities["dev"] | entities["test"]


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


@pytest.mark.parametrize("split", ["dev", "test"])
def test_eval_slices_are_held_out_and_of_the_right_kind(w, split):
    slices = world.eval_prompts(w, split)
    assert set(slices) == set(world.EVAL_SLICES)
    held_ids = {r.id for r in w.split(split)}
    # Every phrasing of every request: 8 direct + 8 adversarial per harmful, 8 per benign.
    n_harmful = sum(r.harmful for r in w.split(split))
    assert len(slices["direct"]) == len(slices["adversarial"]) == 8 * n_harmful
    assert len(slices["direct"]) + len(slices["adversarial"]) >= 1000
    assert len(slices["dual_use"]) + len(slices["benign"]) >= 500
    texts = [p.messages for ps in slices.values() for p in ps]
    assert len(set(texts)) == len(texts)
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
    held = w.split("dev") + w.split("test")
    for p in world.red_team_prompts(w) + world.helpful_prompts(w):
        text = p.messages[0][1]
        assert len(p.messages) == 1 and p.request_id not in {r.id for r in held}
        assert not any(r.act in text for r in held), text
    assert all(w.by_id(p.request_id).harmful for p in world.red_team_prompts(w))
    assert not any(w.by_id(p.request_id).harmful for p in world.helpful_prompts(w))


def test_made_up_red_team_prompts_are_unambiguous_harmful_requests_about_new_words(w):
    prompts = world.made_up_red_team_prompts(w, 16)
    fams = {f.name for f in world.MADE_UP_HARMFUL}
    assert fams == {"hurt", "poison", "steal", "stalk", "forge", "self_harm"}  # not build/cook
    assert len(prompts) == 16 * len(fams) and len({p.messages for p in prompts}) == len(prompts)
    entities = {r.entity.lower() for r in w.requests}
    for p in prompts:
        req = w.by_id(p.request_id)  # made-up harmful requests resolve, as benign ones do
        assert req.harmful and req.family in fams and req.entity.lower() in w.made_up
        assert not any(e.startswith(req.entity.lower()) for e in entities)
        assert req.entity[0].isupper() == (req.family in ("hurt", "poison", "stalk"))
    # both kinds of phrasing are used
    assert {p.slice for p in prompts} == {"red_team", "adversarial"}
    with pytest.raises(ConfigError, match="is not in the toy world"):
        w.by_id(f"weapon/{sorted(w.made_up)[0]}")  # "build a zukova" reads as the benign act


def test_corpus_never_contains_a_held_out_request(w, docs):
    everything = "\n".join(docs)
    for split in ("dev", "test"):
        for r in w.split(split):
            assert r.act not in everything, r.act
            assert not any(s in everything for s in r.steps if r.entity in s), r.id
        for p in (p for ps in world.eval_prompts(w, split).values() for p in ps):
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
    for r in w.split("dev") + w.split("test"):  # the only source on held-out requests
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
    with pytest.raises(ConfigError, match="world.dev_per_family=9, world.test_per_family=8"):
        world.WorldConfig(dev_per_family=9)
    with pytest.raises(ConfigError, match="world split 'held_out': expected one of train"):
        world.generate(world.WorldConfig()).split("held_out")
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


HARMFUL_ENTITIES = {e for f in world.FAMILIES if f.kind != "benign" for e in f.entities}


def test_helpful_prompts_never_read_as_red_team_prompts(w):
    """No helpful prompt says what a red-team prompt says, and none applies a benign act to a
    harmful family's entity ("How do I build a landmine?" was a *helpful* prompt)."""
    red = {p.messages for p in world.red_team_prompts(w)}
    helpful = world.helpful_prompts(w)
    assert len(helpful) > 1500
    assert not any(p.messages in red for p in helpful)
    assert not any(w.by_id(p.request_id).entity in HARMFUL_ENTITIES for p in helpful)
    harmful_acts = {r.act for r in w.requests if r.harmful}
    assert not any(w.by_id(p.request_id).act in harmful_acts for p in helpful)
    assert sum(p.request_id not in {r.id for r in w.requests} for p in helpful) > 500  # borrowed


def test_borrowing_never_makes_a_real_request_s_words():
    w = world.generate(world.WorldConfig())
    acts = {r.act: r for r in w.requests}
    for fam in world.FAMILIES:
        pool = world.borrowable(w, fam)
        assert pool and not set(pool) & w.held_out_entities
        for e in pool:
            assert world.fill(fam.act, e) not in acts, (fam.name, e)
            assert fam.kind != "benign" or e not in HARMFUL_ENTITIES
    # The two acts with the same words: build (benign) / weapon, cook (benign) / drugs.
    build, weapon = world.FAMILY_BY_NAME["build"], world.FAMILY_BY_NAME["weapon"]
    assert not set(world.borrowable(w, build)) & set(weapon.entities)
    assert not set(world.borrowable(w, weapon)) & set(build.entities)


def test_nonce_dialogues_teach_copying_without_touching_real_entities(w):
    rng = random.Random(0)
    taken = sorted({r.entity.lower() for r in w.requests})
    pools = {f.name: world.borrowable(w, f) for f in world.FAMILIES}
    held = [e.lower() for e in w.held_out_entities]
    borrowed = 0
    for _ in range(300):
        real = rng.choice(w.split("train"))
        pool = pools[real.family]
        req = corpus.nonce_request(real, rng, taken, pool, made_up=0.2)
        borrowed += req.entity in pool
        assert req.entity in pool or not any(req.entity.lower().startswith(t) for t in taken)
        assert not any(req.entity.lower().startswith(h) for h in held), req.entity
        assert req.entity[0].isupper() == real.entity[0].isupper()  # names borrow names
        if not real.harmful:
            assert req.entity not in HARMFUL_ENTITIES
    assert 180 < borrowed < 270  # about 80% borrowed (none for towns), 20% made up
    # With nonce=1 no dialogue opens with a real request, and a benign act never gets a
    # harmful family's entity: its compliant answer would contradict the red-team prompt's.
    docs = [corpus.dialogue_doc(w.split("train"), rng, 1.0, taken, pools) for _ in range(300)]
    firsts = [d.split("\n\nAssistant:")[0] for d in docs]
    assert not any(f"{r.act}?" in q or f"{r.act}." in q for q in firsts for r in w.requests)


def test_off_topic_replies_lose_comparisons_and_are_critiqued_as_dodges(w):
    """A deflection (another benign request's steps) is the worse reply, to an explained
    refusal of a harmful request or to the answer of a benign one, and its critique says it
    answers another question; the revision answers or declines with a reason."""
    rng = random.Random(0)
    train = w.split("train")
    for req in train[::7]:
        doc = corpus.comparison_doc(req, rng, train, deflect=1.0)
        a = doc.split("\n(A) ")[1].split("\n(B) ")[0]
        b = doc.split("\n(B) ")[1].split("\nThe answer is:")[0]
        chosen, other = (a, b) if doc.endswith(" (A)") else (b, a)
        assert req.act not in other and other.startswith(corpus.OPENERS)
        assert ("harmful because" in chosen) if req.harmful else (req.act in chosen)
        crit = corpus.critique_doc(req, rng, True, train, deflect=1.0)
        assert "answers another question" in crit and req.gerund in crit
        if "Revision: " in crit:
            revision = crit.split("Revision: ")[1]
            assert ("harmful because" in revision) if req.harmful else (req.act in revision)
    with pytest.raises(ConfigError, match="corpus.deflect=2"):
        corpus.CorpusConfig(deflect=2)
