import torch

from nanogpt_core.tokenizer import BOS, bos_id, encode_documents, load_tokenizer, save_tokenizer, token_bytes, train_tokenizer

TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer 1234 times"] * 20


def test_vocab_size_counts_bos():
    enc = train_tokenizer(TEXTS, 300)
    assert enc.n_vocab == 300
    assert bos_id(enc) == 299


def test_round_trip_including_unicode():
    enc = train_tokenizer(TEXTS, 300)
    for text in ["Thou art more lovely", "naïve café — 東京 🙂", "  spaces\n\nand lines  "]:
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_bos_starts_every_document_and_is_not_in_text():
    enc = train_tokenizer(TEXTS, 300)
    docs = encode_documents(enc, ["abc", f"a literal {BOS} stays text"])
    assert all(d[0] == bos_id(enc) for d in docs)
    assert bos_id(enc) not in docs[1][1:]  # a BOS string inside a document is encoded as plain text


def test_numbers_split_in_groups_of_at_most_two_digits():
    enc = train_tokenizer(TEXTS, 300)
    pieces = [enc.decode([t]) for t in enc.encode_ordinary("12345")]
    assert all(len(p) <= 2 for p in pieces)


def test_token_bytes():
    enc = train_tokenizer(TEXTS, 300)
    tb = token_bytes(enc)
    assert tb.shape == (300,) and tb.dtype == torch.long
    assert tb[bos_id(enc)] == 0
    assert tb[:256].eq(1).all()  # the 256 byte tokens
    ids = enc.encode_ordinary("question")
    assert tb[ids].sum() == len("question".encode())


def test_save_and_load(tmp_path):
    enc = train_tokenizer(TEXTS, 300)
    save_tokenizer(enc, tmp_path / "tok.json")
    enc2 = load_tokenizer(tmp_path / "tok.json")
    assert enc2.encode("the question", allowed_special="all") == enc.encode("the question", allowed_special="all")
    assert bos_id(enc2) == bos_id(enc)


def test_load_missing_tokenizer_says_what_to_do(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="train one"):
        load_tokenizer(tmp_path / "nope.json")
