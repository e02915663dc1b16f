"""Prompt synthesis: exact lengths, determinism, distinct texts, shared blocks, tokenizer-exact counts."""

from __future__ import annotations

import random
import sys

import pytest

from loadgen.config import LengthDist, WorkloadConfig
from loadgen.workload import WorkloadError, load
from loadgen.workload.prompts import WORDS, Synthesizer, synthesize


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 100, 513, 20_000])
def test_word_count_is_exact(n):
    text = synthesize(n, "r000001")
    assert len(text.split()) == n
    assert text == text.strip() and "  " not in text


def test_built_in_words_are_short_lowercase_and_distinct():
    assert len(WORDS) == 512 == len(set(WORDS))
    assert all(w.isalpha() and w.islower() and len(w) <= 9 for w in WORDS)


def test_deterministic_and_distinct_per_key_and_seed():
    assert synthesize(300, "r1") == synthesize(300, "r1")
    a, b = synthesize(300, "r1").split(), synthesize(300, "r2").split()
    assert a[:8] != b[:8]  # different from the first words on: no accidental prefix sharing
    assert synthesize(300, "r1", seed=1) != synthesize(300, "r1", seed=2)
    texts = {synthesize(50, f"r{i:06d}") for i in range(5000)}
    assert len(texts) == 5000


def test_a_longer_text_extends_the_shorter_one():
    synth = Synthesizer(4)
    for n in (1, 8, 9, 600):
        assert synth.text(n + 1, "k").startswith(synth.text(n, "k"))


def test_batch_texts_equal_single_texts():
    synth = Synthesizer(2)
    ns = [0, 1, 5, 8, 9, 77, 4000, 70_000]
    keys = [f"r{i}" for i in range(len(ns))]
    assert synth.texts(ns, keys).to_pylist() == [synth.text(n, k) for n, k in zip(ns, keys)]


def test_blocks_are_byte_identical_per_id_and_distinct_across_ids():
    a, b = Synthesizer(0), Synthesizer(0)
    assert a.block(42) == b.block(42)
    assert len(a.block(42).split()) == 512
    assert a.block(42).split()[:8] != a.block(43).split()[:8]
    prompt = a.prompt(700, "r9", prefix=a.block(42))
    assert prompt.startswith(a.block(42) + " ") and len(prompt.split()) == 700


def test_truncate_keeps_the_text_formatting():
    synth = Synthesizer()
    assert synth.truncate("one  two\nthree four", 3) == "one  two\nthree"
    assert synth.truncate("one two", 5) == "one two"
    assert synth.truncate("one two", 0) == ""


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A small byte-level BPE tokenizer trained here, in which many built-in words split."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["[UNK]"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rnd = random.Random(0)
    tok.train_from_iterator([" ".join(rnd.choice(WORDS[:150]) for _ in range(50)) for _ in range(200)], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), tok


def test_tokenizer_counts_are_exact(tokenizer_json):
    path, tok = tokenizer_json
    synth = Synthesizer(0, tokenizer=path)
    assert synth.unit == "tokens"
    assert len(synth.words) < len(WORDS)  # only single-token words are used
    for n in (1, 2, 5, 50, 700):
        prompt = synth.prompt(n, f"k{n}")
        assert len(tok.encode(prompt, add_special_tokens=False).ids) == n
    prefix = synth.text(40, "p")
    prompt = synth.prompt(100, "x", prefix=prefix)
    assert prompt.startswith(prefix) and len(tok.encode(prompt, add_special_tokens=False).ids) == 100
    assert synth.inexact == 0
    text = "hello world, this is the way"
    cut = synth.truncate(text, 3)
    assert text.startswith(cut) and len(tok.encode(cut, add_special_tokens=False).ids) <= 3


def test_missing_tokenizers_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(WorkloadError, match="pip install tokenizers"):
        Synthesizer(0, tokenizer=str(tmp_path / "tokenizer.json"))


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    pytest.importorskip("tokenizers")
    with pytest.raises(WorkloadError, match="workload.tokenizer: no such file"):
        Synthesizer(0, tokenizer=str(tmp_path / "nope.json"))


def test_workload_tokenizer_makes_request_prompts_exact(tokenizer_json):
    path, tok = tokenizer_json
    cfg = WorkloadConfig(kind="synthetic", num_requests=30, input_tokens=LengthDist(dist="uniform", min=1, max=300), tokenizer=path)
    t = load(cfg).table
    counts = [len(tok.encode(p, add_special_tokens=False).ids) for p in t.column("prompt").to_pylist()]
    assert counts == t.column("input_tokens").to_pylist()
